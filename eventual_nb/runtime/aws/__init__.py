"""The AWS side of the runtimes: what runs inside the Lambda functions of an exported service.

`lambda_api` adapts API Gateway HTTP API events to the service's ASGI app and routes the other entry
points to `functions` (the orchestrator and workers of one stack, built once per container). The public
client is `eventual_nb.aws.AwsRuntime`. Nothing here imports boto3 or FastAPI at import time, so the
generated `handlers.py` stays cheap to load on a cold start.
"""
