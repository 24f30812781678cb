"""The AWS side of the runtimes: what runs inside the Lambda functions of an exported service.

`lambda_api` adapts API Gateway HTTP API events to the service's ASGI app. The boto3 backend
(`AwsRuntime`, the public module `eventual_nb.aws`) lands with issue 6. Nothing here imports boto3 or
FastAPI at import time, so the generated `handlers.py` stays cheap to load on a cold start.
"""
