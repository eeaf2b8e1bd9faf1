// Command go_runner is a HEAT runner written in Go against the generated stubs
// (github.com/heatglobal/heat-scheduler/gen/go): it claims tasks of its Node Templates on the
// ClaimTask stream, keeps their leases on the Heartbeat stream, posts each outcome on the
// PostResult stream with the Runner's credential, and drains on SIGTERM.
//
// It is configured like every HEAT runner, by HEAT_SCHEDULER_ADDRESS, HEAT_RUNNER,
// HEAT_RUNNER_CREDENTIAL, HEAT_CAPACITY, HEAT_INSTANCE_ID and HEAT_DRAIN_TIMEOUT.
// Exit status: 0 once drained, 2 for a bad setting, 3 when the scheduler refuses the instance.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// Config is what the environment says.
type Config struct {
	Address      string
	Runner       string
	Credential   string
	Capacity     int
	InstanceID   string
	DrainTimeout time.Duration
}

// ConfigFromEnv reads the HEAT_* variables; an error names the bad one.
func ConfigFromEnv() (Config, error) {
	cfg := Config{
		Address:      env("HEAT_SCHEDULER_ADDRESS", "127.0.0.1:50051"),
		Runner:       env("HEAT_RUNNER", ""),
		Credential:   env("HEAT_RUNNER_CREDENTIAL", ""),
		Capacity:     1,
		InstanceID:   env("HEAT_INSTANCE_ID", env("HOSTNAME", "")),
		DrainTimeout: 30 * time.Second,
	}
	if cfg.Runner == "" {
		return cfg, errors.New("HEAT_RUNNER must name the Runner this instance serves")
	}
	if raw := env("HEAT_CAPACITY", ""); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > 10000 {
			return cfg, fmt.Errorf("HEAT_CAPACITY must be a whole number from 1 to 10000, not %q", raw)
		}
		cfg.Capacity = n
	}
	if raw := env("HEAT_DRAIN_TIMEOUT", ""); raw != "" {
		seconds, err := strconv.ParseFloat(raw, 64)
		if err != nil || seconds < 0 {
			return cfg, fmt.Errorf("HEAT_DRAIN_TIMEOUT must be seconds (0 or more), not %q", raw)
		}
		cfg.DrainTimeout = time.Duration(seconds * float64(time.Second))
	}
	if cfg.InstanceID == "" {
		cfg.InstanceID = fmt.Sprintf("go-runner-%d", os.Getpid())
	}
	return cfg, nil
}

func env(name, fallback string) string {
	if value, ok := os.LookupEnv(name); ok && value != "" {
		return value
	}
	return fallback
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg, err := ConfigFromEnv()
	if err != nil {
		log.Error("bad setting", "error", err)
		os.Exit(2)
	}
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	stop := make(chan string)
	go func() {
		for s := range signals {
			stop <- s.String()
		}
	}()
	err = NewRunner(cfg, log, ScaleSum{}).Serve(stop)
	var refused RefusedError
	switch {
	case errors.As(err, &refused):
		log.Error("exiting", "error", err)
		os.Exit(3)
	case err != nil:
		log.Error("exiting", "error", err)
		os.Exit(1)
	}
}
