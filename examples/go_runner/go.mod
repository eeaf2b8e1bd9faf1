module github.com/heatglobal/heat-scheduler/examples/go_runner

go 1.25.0

require (
	github.com/heatglobal/heat-scheduler/gen/go v0.0.0
	google.golang.org/grpc v1.84.0
	google.golang.org/protobuf v1.36.12
)

require (
	golang.org/x/net v0.57.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.40.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260706201446-f0a921348800 // indirect
)

// Built against the generated module of this checkout; another service requires a tagged
// version instead (see the README's "Using the contract from another service").
replace github.com/heatglobal/heat-scheduler/gen/go => ../../gen/go
