"""Schedules on AWS, the parts without a stack: the `cron()`/`rate()` mapping of every schedule, the template's
recurring schedules (cfn-lint), the harness's reading of AWS expressions, and the export of
`%%workflow --schedule` (flags → `@ev.schedule` → manifest → template, and the refusals)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eventual_nb as ev
from eventual_nb import magic_syntax
from eventual_nb.magic_syntax import FlagError
from eventual_nb.runtime.aws.harness import Harness, recurring_fires
from eventual_nb.runtime.aws.schedules import (
    SCHEDULED_TIME,
    aws_expression,
    fire_input,
    read_fire,
    scheduler_name,
)
from eventual_nb.runtime.core.schedules import (
    InvalidSchedule,
    Schedule,
    decide_delivery,
    define_schedule,
    delivered_fire,
    execution_name,
)
from eventual_nb.testing import ManualClock
from exporter import ExportError, export_notebook
from exporter.template import build_template, schedule_logical_id
from tests import aws_support
from tests.aws_rig import aws_stack_runtime
from tests.aws_support import assert_lint_clean, manifest
from tests.test_exporter import C, assert_located, write_notebook


def cron(line: str, timezone: str = "UTC", name: str = "s") -> Schedule:
    return define_schedule(name=name, workflow="w", cron=line, timezone=timezone)


def every(interval: str, name: str = "s") -> Schedule:
    return define_schedule(name=name, workflow="w", every=interval)


def Z(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# ------------------------------------------------------------------------------------------ the mapping


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0 9 * * MON-FRI", "cron(0 9 ? * MON-FRI *)"),
        ("*/15 * * * *", "cron(0,15,30,45 * * * ? *)"),
        ("30 2 1 * *", "cron(30 2 1 * ? *)"),
        ("0 8-18/2 * JAN,JUL *", "cron(0 8,10,12,14,16,18 * 1,7 ? *)"),
        ("0 0 L * *", "cron(0 0 L * ? *)"),
        ("0 12 * * 5L", "cron(0 12 ? * 6L *)"),  # last Friday: AWS counts days of the week 1-7 from Sunday
        ("0 12 * * MON#2", "cron(0 12 ? * 2#2 *)"),
        ("0 0 * * 0,6", "cron(0 0 ? * SUN,SAT *)"),
        ("0 0 * * 7", "cron(0 0 ? * SUN *)"),  # cron's other Sunday
        ("5 4 * * *", "cron(5 4 * * ? *)"),
        ("0 0 1-31 * MON", "cron(0 0 * * ? *)"),  # cron ORs two restricted day fields: here every day
        ("0 0 */2 * *", "cron(0 0 1,3,5,7,9,11,13,15,17,19,21,23,25,27,29,31 * ? *)"),
    ],
)
def test_cron_lines_map_to_aws_six_field_cron(line: str, expected: str) -> None:
    assert aws_expression(cron(line)) == expected


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("1m", "cron(* * * * ? *)"),
        ("15m", "cron(0,15,30,45 * * * ? *)"),
        ("1h", "cron(0 * * * ? *)"),
        ("6h", "cron(0 0,6,12,18 * * ? *)"),
        ("1d", "cron(0 0 * * ? *)"),
        ("7m", "rate(7 minutes)"),  # does not divide the day: ticks from creation, mapped by delivered_fire
        ("90m", "rate(90 minutes)"),
        ("5h", "rate(5 hours)"),
        ("2d", "rate(2 days)"),
    ],
)
def test_intervals_map_to_cron_when_aligned_and_rate_otherwise(interval: str, expected: str) -> None:
    assert aws_expression(every(interval)) == expected


@pytest.mark.parametrize(
    ("schedule", "says"),
    [
        (lambda: cron("0 9 1 * MON", name="payday"), "restricts both the day-of-month ('1') and the day-of-week"),
        (lambda: cron("0 0 LW * *", name="close"), "no 'LW'"),
        (lambda: cron("0 0 1,L * *", name="edges"), "'L' (last day of the month) only on its own"),
        (lambda: cron("0 0 * * 5L,MON", name="mix"), "only on its own"),
        (lambda: every("30s", name="fast"), "every=30s is not a whole number of minutes"),
        (lambda: every("90s", name="odd"), "every=90s"),
    ],
)
def test_what_aws_cannot_say_is_refused_naming_the_schedule(schedule: Any, says: str) -> None:
    definition = schedule()
    with pytest.raises(InvalidSchedule) as caught:
        aws_expression(definition)
    assert f"schedule '{definition.name}'" in caught.value.message
    assert says in caught.value.message
    assert "cannot be deployed to AWS" in caught.value.message


_LINES = [
    "0 9 * * MON-FRI",
    "30 2 * * *",  # 02:30 is skipped on the spring-forward night in Paris
    "30 1 * * *",  # 01:30 happens twice on the fall-back night in New York
    "*/20 8-10 * * SAT,SUN",
    "0 0 L * *",
    "15 12 * * 5L",
    "0 6 * * TUE#1",
    "0 0 29 2 *",
    "45 23 31 DEC *",
]


@settings(max_examples=40, deadline=None)
@given(
    line=st.sampled_from(_LINES),
    zone=st.sampled_from(["Europe/Paris", "America/New_York", "UTC", "Australia/Lord_Howe"]),
    start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
)
def test_eventbridge_fires_the_mapped_cron_line_when_we_do(line: str, zone: str, start: datetime) -> None:
    """The harness reads AWS's 6-field cron as EventBridge Scheduler does; over a year the mapped expression
    fires exactly when the schedule fires, daylight-saving changes and year boundaries included."""
    schedule = cron(line, zone)
    after = start.replace(tzinfo=UTC)
    until = after + timedelta(days=366)
    aws = {"ScheduleExpression": aws_expression(schedule), "ScheduleExpressionTimezone": zone}
    assert recurring_fires(aws, after, after, until) == schedule.fires(after, until)


def test_aligned_intervals_fire_alike_and_rate_ticks_stand_for_distinct_fires() -> None:
    after, until = Z(2025, 3, 29), Z(2025, 4, 2)
    for interval in ("1m", "15m", "1h", "6h", "1d"):
        schedule = every(interval)
        aws = {"ScheduleExpression": aws_expression(schedule), "ScheduleExpressionTimezone": "UTC"}
        assert recurring_fires(aws, after, after, until) == schedule.fires(after, until), interval
    seven = every("7m")
    created = Z(2025, 3, 29, 10, 3, 17)  # rate() ticks from the schedule's creation
    ticks = recurring_fires({"ScheduleExpression": "rate(7 minutes)"}, created, created, created + timedelta(hours=5))
    fires = [delivered_fire(seven, tick) for tick in ticks]
    assert len(set(fires)) == len(ticks) == 5 * 60 // 7
    assert all(fire in seven.fires(fire - timedelta(seconds=1), fire) for fire in fires)
    assert all(timedelta(0) <= tick - fire < timedelta(minutes=7) for tick, fire in zip(ticks, fires, strict=True))


def test_a_delivery_is_named_by_its_scheduled_time_and_a_repeat_starts_nothing() -> None:
    schedule = cron("0 9 * * MON-FRI", "Europe/Paris", name="report")
    event = json.loads(fire_input("report").replace(SCHEDULED_TIME, "2025-03-31T07:00:00Z"))
    name, scheduled = read_fire(event) or ("", Z(1970, 1, 1))
    assert (name, scheduled) == ("report", Z(2025, 3, 31, 7))
    first = decide_delivery(schedule, None, scheduled, previous_in_progress=False)
    assert [start.execution_name for start in first.starts] == ["report-20250331T070000Z"]
    assert first.starts[0].input == Z(2025, 3, 31, 7)
    again = decide_delivery(schedule, first.state, scheduled, previous_in_progress=False)
    assert again.starts == ()
    # a timer's body is not a schedule fire; a fire without its time is refused, naming what is missing
    assert read_fire({"execution_id": "w/1", "due": "x", "event": {}}) is None
    with pytest.raises(InvalidSchedule, match="scheduled_time"):
        read_fire({"eventual_schedule": "report"})
    assert execution_name("report", scheduled) == first.starts[0].execution_name


def test_scheduler_names_are_valid_and_distinct() -> None:
    names = ["report", "a:b", "a-b", "x" * 63, "nightly.sync_2"]
    made = [scheduler_name(name) for name in names]
    assert len(set(made)) == len(made)
    for item in made:
        assert item.startswith("s-")
        assert 1 <= len(item) <= 64
        assert all(ch.isalnum() or ch in "._-" for ch in item), item


# ------------------------------------------------------------------------------------------ the template


def manifest_with(*schedules: Schedule) -> dict[str, Any]:
    made = manifest("sched-tmpl")
    made["service"]["schedules"] = [schedule.spec() for schedule in schedules]
    return made


def test_template_declares_one_recurring_schedule_per_schedule_and_passes_cfn_lint() -> None:
    morning = define_schedule(name="morning", workflow="transfer", cron="0 9 * * MON-FRI", timezone="Europe/Paris")
    tick = define_schedule(name="tick", workflow="transfer", every="7m")
    template = build_template(manifest_with(morning, tick))
    assert_lint_clean(template)
    recurring = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Scheduler::Schedule"}
    assert set(recurring) == {schedule_logical_id("morning"), schedule_logical_id("tick")}
    resource = recurring[schedule_logical_id("morning")]
    assert resource["Condition"] == "Real"  # moto cannot create it; `deploy` makes it in the emulator
    properties = resource["Properties"]
    assert properties["ScheduleExpression"] == "cron(0 9 ? * MON-FRI *)"
    assert properties["ScheduleExpressionTimezone"] == "Europe/Paris"
    assert properties["GroupName"] == {"Ref": "ScheduleGroup"}
    assert properties["Target"]["Arn"] == {"Fn::GetAtt": ["ScheduleForwarderFunction", "Arn"]}
    assert properties["Target"]["RoleArn"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}
    assert json.loads(properties["Target"]["Input"]) == {
        "eventual_schedule": "morning",
        "scheduled_time": "<aws.scheduler.scheduled-time>",
    }
    assert recurring[schedule_logical_id("tick")]["Properties"]["ScheduleExpression"] == "rate(7 minutes)"
    # deterministic, whatever order the schedules were defined in
    assert build_template(manifest_with(tick, morning)) == template


def granted(template: dict[str, Any], role: str) -> set[tuple[str, str]]:
    """(action, logical id of a resource it names) for every statement of the role, both sides of any Fn::If."""
    found: set[tuple[str, str]] = set()

    def names(node: Any) -> set[str]:
        if isinstance(node, dict):
            if "Ref" in node:
                return {node["Ref"]}
            if "Fn::GetAtt" in node:
                return {node["Fn::GetAtt"][0]}
            if "Fn::Sub" in node:
                return set(re.findall(r"\$\{([A-Za-z0-9]+)", json.dumps(node["Fn::Sub"])))
            return set().union(*(names(value) for value in node.values()))
        return set()

    def collect(statement: Any) -> None:
        if isinstance(statement, dict) and set(statement) == {"Fn::If"}:
            for branch in statement["Fn::If"][1:]:
                collect(branch)
        elif isinstance(statement, dict) and "Action" in statement:
            for action in statement["Action"]:
                for resource in statement["Resource"]:
                    found.update((action, name) for name in names(resource))

    for policy in template["Resources"][role]["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            collect(statement)
    return found


def test_a_service_with_schedules_grants_the_forwarder_and_the_api_what_schedules_need_and_no_more() -> None:
    plain = build_template(manifest_with())
    scheduled = build_template(manifest_with(cron("0 9 * * *", name="morning")))
    needs = {
        "ScheduleForwarderRole": {("sqs:SendMessage", "WorkflowQueue"), ("dynamodb:PutItem", "ExecutionsTable")},
        "ApiRole": {
            ("scheduler:UpdateSchedule", "ScheduleGroup"),
            ("scheduler:GetSchedule", "ScheduleGroup"),
            ("iam:PassRole", "SchedulerRole"),
        },
    }
    for role, wanted in needs.items():
        assert wanted <= granted(scheduled, role), role
        assert not wanted & granted(plain, role), role  # a service without schedules does without them
    assert ("scheduler:CreateSchedule", "ScheduleGroup") not in granted(scheduled, "ApiRole")
    assert ("scheduler:UpdateSchedule", "ScheduleGroup") not in granted(scheduled, "ScheduleForwarderRole")


# ------------------------------------------------------------------------------------------ flags and export


def test_workflow_schedule_flags() -> None:
    args = magic_syntax.parse_flags("workflow", '--schedule "0 9 * * MON-FRI" --timezone Europe/Paris')
    assert magic_syntax.schedule_options(args) == {"cron": "0 9 * * MON-FRI", "timezone": "Europe/Paris"}
    args = magic_syntax.parse_flags("workflow", "--every 15m --overlap allow --catchup all")
    assert magic_syntax.schedule_options(args) == {"every": "15m", "overlap": "allow", "catchup": "all"}
    assert magic_syntax.schedule_options(magic_syntax.parse_flags("workflow", "--timeout 1h")) is None
    for line, says in [
        ("--schedule '0 9 * * *' --every 1h", "--schedule CRON or --every DURATION, not both"),
        ("--timezone Europe/Paris", "--timezone needs --schedule CRON or --every DURATION"),
        ("--every soon", "invalid duration value: 'soon'"),
        ("--schedule '0 9 * * *' --overlap never", "invalid choice: 'never'"),
    ]:
        with pytest.raises(FlagError) as caught:
            magic_syntax.parse_flags("workflow", line)
        assert caught.value.message.startswith("%%workflow: "), caught.value.message
        assert says in caught.value.message


SCHEDULED = [
    C("#| export\nfrom datetime import datetime\n\n%eventual service reports", "imports"),
    C(
        '%%workflow --schedule "0 9 * * MON-FRI" --timezone Europe/Paris\n'
        "async def morning_report(fired_at: datetime) -> str:\n"
        "    return fired_at.isoformat()",
        "report",
    ),
    C("%%workflow --every 15m --catchup none\nasync def sweep(fired_at: datetime) -> None:\n    return None", "sweep"),
]


def test_export_writes_the_schedule_decorator_manifest_and_template(tmp_path: Path) -> None:
    out = export_notebook(write_notebook(tmp_path / "reports.ipynb", SCHEDULED), tmp_path / "out")
    source = (out / "reports" / "__init__.py").read_text()
    lines = source.splitlines()
    at = lines.index('@ev.schedule("0 9 * * MON-FRI", timezone="Europe/Paris")')
    assert lines[at + 1] == "@ev.workflow"
    assert lines[at + 2].startswith("async def morning_report(")
    assert '@ev.schedule(every="15m", catchup="none")' in lines
    manifest = json.loads((out / "eventual.json").read_text())
    assert {item["name"]: item["timezone"] for item in manifest["service"]["schedules"]} == {
        "morning_report": "Europe/Paris",
        "sweep": "UTC",
    }
    template = json.loads((out / "template.json").read_text())
    expressions = sorted(
        item["Properties"]["ScheduleExpression"]
        for item in template["Resources"].values()
        if item["Type"] == "AWS::Scheduler::Schedule"
    )
    assert expressions == ["cron(0 9 ? * MON-FRI *)", "cron(0,15,30,45 * * * ? *)"]


def _refused(tmp_path: Path, cell: C) -> ExportError:
    notebook = write_notebook(tmp_path / "bad.ipynb", [SCHEDULED[0], cell])
    with pytest.raises(ExportError) as caught:
        export_notebook(notebook, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "a refused export writes nothing"
    return caught.value


def test_export_refuses_a_bad_cron_line_and_one_aws_cannot_run_at_the_cell(tmp_path: Path) -> None:
    bad = _refused(
        tmp_path, C('%%workflow --schedule "0 25 * * *"\nasync def w(fired_at: datetime) -> None: ...', "bad")
    )
    assert_located(bad, 1, "bad", 1)
    assert "the hour field '25' (field 2) is not valid" in bad.message
    both = _refused(
        tmp_path, C('%%workflow --schedule "0 9 1 * MON"\nasync def payday(at: datetime) -> None: ...', "both")
    )
    assert_located(both, 1, "both", 1)
    assert "schedule 'payday'" in both.message
    assert "cannot be deployed to AWS" in both.message
    seconds = _refused(tmp_path, C("%%workflow --every 30s\nasync def fast(at: datetime) -> None: ...", "fast"))
    assert_located(seconds, 1, "fast", 1)
    assert "every=30s is not a whole number of minutes" in seconds.message


# ------------------------------------------------------------------------------------------ a stack in moto

moto_endpoint = aws_support.moto_endpoint
dummy_credentials = aws_support.dummy_credentials

DRIVEN = ev.Service("sched-driven")


@ev.schedule("*/20 * * * *", timezone="Europe/Paris")
@ev.workflow
async def every_twenty(fired_at: datetime) -> str:
    return f"fired {fired_at:%H:%M}Z"


async def test_the_harness_drives_three_fires_of_a_deployed_schedule_end_to_end(
    moto_endpoint: str, dummy_credentials: None
) -> None:
    clock = ManualClock(Z(2025, 3, 27, 9, 5))
    async with aws_stack_runtime(moto_endpoint, DRIVEN, clock=clock) as stack:
        stack.driver.stop()  # this test drives the harness itself, round by round
        harness = Harness(stack.functions.clients, stack.functions.handlers(), clock)
        scheduler = stack.functions.clients.client("scheduler")
        group = stack.functions.clients.settings.schedule_group
        deployed = scheduler.get_schedule(Name=scheduler_name("every_twenty"), GroupName=group)
        assert (deployed["ScheduleExpression"], deployed["ScheduleExpressionTimezone"]) == (
            "cron(0,20,40 * * * ? *)",
            "Europe/Paris",
        )
        assert deployed["Target"]["Arn"].endswith(stack.functions.clients.settings.schedule_target_arn.split(":")[-1])
        harness.run_until_idle()  # the harness sees the schedule at 09:05: no fire before that
        fired: list[str] = []
        for _ in range(3):  # 09:20, 09:40, 10:00: each fire's execution runs before the next fire
            fired += harness.advance(timedelta(minutes=20), wait_seconds=0).fired_schedules
        assert fired == [
            f"{scheduler_name('every_twenty')}@2025-03-27T{stamp}Z" for stamp in ("09:20:00", "09:40:00", "10:00:00")
        ]
        runtime = stack.runtime
        executions = (await runtime.list_executions(workflow="every_twenty")).executions
        assert [execution.id for execution in executions] == [
            f"every_twenty/every_twenty-20250327T{stamp}Z" for stamp in ("092000", "094000", "100000")
        ]
        assert [execution.result for execution in executions] == ["fired 09:20Z", "fired 09:40Z", "fired 10:00Z"]
        # EventBridge delivers at least once: the same fire again starts nothing new
        forwarder = stack.functions.handlers()["schedule"]
        forwarder({"eventual_schedule": "every_twenty", "scheduled_time": "2025-03-27T09:40:00Z"}, None)
        harness.run_until_idle()
        assert len((await runtime.list_executions(workflow="every_twenty")).executions) == 3
        # pause and resume switch the EventBridge schedule off and on
        await runtime.pause_schedule("every_twenty")
        assert scheduler.get_schedule(Name=scheduler_name("every_twenty"), GroupName=group)["State"] == "DISABLED"
        assert harness.advance(timedelta(hours=1), wait_seconds=0).fired_schedules == []
        await runtime.resume_schedule("every_twenty")
        assert scheduler.get_schedule(Name=scheduler_name("every_twenty"), GroupName=group)["State"] == "ENABLED"
        info = (await runtime.list_schedules())[0]
        assert (info.paused, info.next_fire, info.last_fire) == (False, Z(2025, 3, 27, 11, 20), Z(2025, 3, 27, 10))
