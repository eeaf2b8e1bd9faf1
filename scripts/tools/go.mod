// The Go code generators of scripts/gen_protos.py, pinned (with their checksums in go.sum).
// scripts/bootstrap installs them with `go install tool` into .cache/bin.
module heat-scheduler/tools

go 1.25.0

tool (
	google.golang.org/grpc/cmd/protoc-gen-go-grpc
	google.golang.org/protobuf/cmd/protoc-gen-go
)

require (
	google.golang.org/grpc/cmd/protoc-gen-go-grpc v1.6.2 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
