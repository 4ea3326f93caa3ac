"""Calling a function the way a client in any language would: raw gRPC, JSON payload.

The SDK uses cloudpickle, but every RPC also takes `PAYLOAD_FORMAT_JSON`: arguments as a JSON
array (or {"args": [...], "kwargs": {...}}), the result as JSON. With the app deployed, the
same call from a shell is:

    buf curl --protocol grpc --http2-prior-knowledge \
      -H "authorization: Bearer $APOTHIC_API_KEY" \
      -d '{"function": {"app_name": "any-language", "function_name": "add"},
           "args": {"format": "PAYLOAD_FORMAT_JSON", "data": "WzIsIDNd"}}' \
      http://$APOTHIC_BASE_URL/apothic.v1.FunctionService/InvokeFunction

    apothic run examples/any_language.py
"""

import json

import apothic

app = apothic.App("any-language")


@app.function()
def add(a: int, b: int) -> dict:
    """Adds two numbers and says how."""
    return {"sum": a + b, "how": "python"}


@app.local_entrypoint()
def main() -> None:
    """Calls `add` through the generated gRPC stub with JSON, as a Go or JS client would."""
    import grpc

    from apothic._proto.v1 import function_service_pb2 as fn
    from apothic._proto.v1 import function_service_pb2_grpc as fn_grpc
    from apothic._proto.v1 import types_pb2 as types

    config = apothic.config.load_client_config()  # APOTHIC_BASE_URL/API_KEY or ~/.apothic
    assert config is not None
    with grpc.insecure_channel(config.base_url) as channel:
        stub = fn_grpc.FunctionServiceStub(channel)
        response = stub.InvokeFunction(
            fn.InvokeFunctionRequest(
                function=types.FunctionRef(app_name="any-language", function_name="add"),
                args=types.Payload(format=types.PAYLOAD_FORMAT_JSON, data=json.dumps([2, 3]).encode()),
            ),
            metadata=[("authorization", f"Bearer {config.api_key}")],
        )
    print("status:", types.JobStatus.Name(response.status))
    print("result (JSON):", response.result.value.data.decode())
