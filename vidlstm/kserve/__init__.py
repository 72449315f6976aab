"""Message classes of the KServe v2 gRPC protocol (NVIDIA Triton's `grpc_service.proto` and
`model_config.proto`, BSD-3-Clause: see LICENSE here), generated under the private protobuf package
`vidlstm.kserve` so they never clash with a `tritonclient` in the same process."""
