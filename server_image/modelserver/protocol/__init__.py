"""The transports: TF Serving's REST API (`rest`, `rest_json`) and gRPC services (`grpc_service`,
`proto_api`), KServe's v2 protocol on the same ports (`v2_rest`, `v2_grpc`; `v2_types`, `v2_model`,
`v2_api`), the admin port (`admin`) and TLS. They decode, call the data plane, and encode.
"""
