"""The transports: TF Serving's REST API (`rest`, `rest_json`) and gRPC services (`grpc_service`,
`proto_api`), the admin port (`admin`) and TLS. They decode, call the data plane, and encode.
"""
