package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
)

// ScaleSum serves the Node Template "scale-sum": it multiplies the "sum" of its one upstream
// node's outputs (e.g. a csv-column-sum node of the Python example runner) by config.factor.
//
//	config  {"factor": 2}                 (default 1; "delay": seconds of simulated work)
//	inputs  {"q1": {"sum": 200.5, ...}}
//	outputs {"sum": 401, "factor": 2, "from": "q1", "runtime": "go"}
type ScaleSum struct{}

// Template names the Node Template.
func (ScaleSum) Template() string { return "scale-sum" }

type scaled struct {
	Sum     float64 `json:"sum"`
	Factor  float64 `json:"factor"`
	From    string  `json:"from"`
	Runtime string  `json:"runtime"`
}

// Validate wants one upstream node with a numeric "sum" and a numeric factor.
func (ScaleSum) Validate(inputs, config map[string]any) error {
	if len(inputs) != 1 {
		return fmt.Errorf("scale-sum takes exactly one upstream node, got %d", len(inputs))
	}
	for key, output := range inputs {
		if _, err := upstreamSum(key, output); err != nil {
			return err
		}
	}
	if _, err := number(config, "factor", 1); err != nil {
		return err
	}
	_, err := number(config, "delay", 0)
	return err
}

// Process scales the upstream sum, after the configured delay (the task's context ends it
// early when the scheduler cancels the task or the runner hands it back).
func (ScaleSum) Process(ctx context.Context, inputs, config map[string]any) (any, error) {
	factor, _ := number(config, "factor", 1)
	delay, _ := number(config, "delay", 0)
	select {
	case <-time.After(time.Duration(delay * float64(time.Second))):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for key, output := range inputs {
		sum, _ := upstreamSum(key, output)
		result := sum * factor
		if math.IsInf(result, 0) {
			return nil, PermanentError{fmt.Errorf("%v × %v does not fit a float64", sum, factor)}
		}
		return scaled{Sum: result, Factor: factor, From: key, Runtime: "go"}, nil
	}
	return nil, PermanentError{errors.New("no upstream node")}
}

func upstreamSum(key string, output any) (float64, error) {
	fields, ok := output.(map[string]any)
	if sum, isNumber := fields["sum"].(float64); ok && isNumber {
		return sum, nil
	}
	return 0, fmt.Errorf("input %q has no numeric \"sum\" field: %v", key, output)
}

func number(config map[string]any, name string, fallback float64) (float64, error) {
	raw, present := config[name]
	if !present {
		return fallback, nil
	}
	if value, ok := raw.(float64); ok && !math.IsNaN(value) && value >= 0 {
		return value, nil
	}
	return 0, fmt.Errorf("config.%s must be a number, 0 or more, not %v", name, raw)
}
