package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	schedulerv1 "github.com/heatglobal/heat-scheduler/gen/go/heat/scheduler/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Processor serves one Node Template.
type Processor interface {
	// Template names the Node Template it processes.
	Template() string
	// Validate checks a task before it is processed; an error fails the attempt for good.
	Validate(inputs, config map[string]any) error
	// Process does the work and returns outputs that marshal to JSON. An error fails the
	// attempt and is retried, unless it is a PermanentError. ctx ends when the scheduler
	// cancels the task, its lease is lost, the attempt times out or the runner hands it back.
	Process(ctx context.Context, inputs, config map[string]any) (any, error)
}

// PermanentError fails an attempt without a retry: it would fail again.
type PermanentError struct{ Err error }

func (e PermanentError) Error() string { return e.Err.Error() }
func (e PermanentError) Unwrap() error { return e.Err }

// RefusedError: the scheduler refuses this instance (credential, Runner, address); retrying
// would not help.
type RefusedError struct{ Err error }

func (e RefusedError) Error() string { return "the scheduler refused this instance: " + e.Err.Error() }

const (
	runtimeVersion   = "heat-go-runner-example/0.1.0"
	ackGrace         = 10 * time.Second // results get this long to be acknowledged when draining
	stableConnection = 5 * time.Second  // a connection that lasted this long resets the backoff
	maxReceiveBytes  = 64 << 20
)

// attempt is a task this instance holds, from its arrival until its outcome is acknowledged
// (or the scheduler no longer wants it).
type attempt struct {
	task    *schedulerv1.Task
	counts  bool                           // takes one unit of capacity
	cancel  context.CancelFunc             // stops Process
	stopped string                         // "cancelled", "lost" (post nothing) or "draining"
	result  *schedulerv1.PostResultRequest // the outcome, posted until acknowledged
	sentOn  *connection                    // the connection it was last posted on
}

// connection is one set of the three streams; the senders wait on these wake-ups.
type connection struct {
	claimWake, postWake, beatWake chan struct{}
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Runner claims tasks for its processors, heartbeats while they run, posts their outcomes,
// reconnects when the scheduler goes away and drains when told to stop.
type Runner struct {
	cfg        Config
	processors map[string]Processor
	log        *slog.Logger

	mu       sync.Mutex
	attempts map[string]*attempt
	credits  int32         // freed since the last ClaimCredit
	interval time.Duration // between heartbeats, as the scheduler says
	conn     *connection   // the live connection, or nil
	draining bool
	drainBy  time.Time     // what still runs then is handed back
	changed  chan struct{} // any change of the bookkeeping, for the drain
	drained  chan struct{} // closed once drained
}

// NewRunner serves the given processors with the given settings.
func NewRunner(cfg Config, log *slog.Logger, processors ...Processor) *Runner {
	r := &Runner{
		cfg:        cfg,
		processors: map[string]Processor{},
		log:        log,
		attempts:   map[string]*attempt{},
		interval:   10 * time.Second,
		changed:    make(chan struct{}, 1),
		drained:    make(chan struct{}),
	}
	for _, p := range processors {
		r.processors[p.Template()] = p
	}
	return r
}

func (r *Runner) templates() []string {
	names := make([]string, 0, len(r.processors))
	for name := range r.processors {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Serve runs until drained (returns nil) or refused (returns a RefusedError). Each value
// received on stop starts a drain; the second one hands held tasks back at once.
func (r *Runner) Serve(stop <-chan string) error {
	client, err := grpc.NewClient(
		r.cfg.Address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer(r.cfg.Credential)),
		// A task carries its upstream nodes' outputs: allow as much as the Python runtime.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxReceiveBytes)),
	)
	if err != nil {
		return fmt.Errorf("HEAT_SCHEDULER_ADDRESS %q: %w", r.cfg.Address, err)
	}
	defer client.Close()
	go func() {
		for reason := range stop {
			r.beginDrain(reason, time.Time{})
		}
	}()
	r.log.Info("runner starting", "runner", r.cfg.Runner, "instance_id", r.cfg.InstanceID,
		"scheduler", r.cfg.Address, "capacity", r.cfg.Capacity, "templates", strings.Join(r.templates(), ","))
	runners := schedulerv1.NewRunnerServiceClient(client)
	backoff := 100 * time.Millisecond
	for {
		started := time.Now()
		err := r.session(runners)
		if err == nil {
			break // drained
		}
		var refused RefusedError
		if errors.As(err, &refused) {
			return err
		}
		if time.Since(started) > stableConnection {
			backoff = 100 * time.Millisecond
		}
		r.log.Warn("scheduler connection lost; reconnecting", "error", err, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-r.drained:
			r.log.Info("drained; exiting", "instance_id", r.cfg.InstanceID)
			return nil
		}
		backoff = min(backoff*2, 5*time.Second)
	}
	r.log.Info("drained; exiting", "instance_id", r.cfg.InstanceID)
	return nil
}

var errDrained = errors.New("drained")

// session serves one connection's three streams until one breaks (its error) or the runner
// has drained (nil).
func (r *Runner) session(client schedulerv1.RunnerServiceClient) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	claims, err := client.ClaimTask(ctx)
	if err != nil {
		return err
	}
	beats, err := client.Heartbeat(ctx)
	if err != nil {
		return err
	}
	posts, err := client.PostResult(ctx)
	if err != nil {
		return err
	}
	c := &connection{make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{}, 1)}
	r.mu.Lock()
	r.conn, r.credits = c, 0
	draining := r.draining
	start := &schedulerv1.ClaimStart{
		Runner: r.cfg.Runner, InstanceId: r.cfg.InstanceID, Credits: r.freeCapacity(),
		NodeTemplates: r.templates(), RuntimeVersion: runtimeVersion,
	}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.conn = nil
		r.mu.Unlock()
	}()
	if draining {
		err = claims.CloseSend()
	} else {
		err = claims.Send(&schedulerv1.ClaimTaskRequest{
			Request: &schedulerv1.ClaimTaskRequest_Start{Start: start},
		})
	}
	if err != nil {
		return streamError("ClaimTask", err)
	}
	r.log.Info("connected to the scheduler", "address", r.cfg.Address, "held", r.held())
	wake(c.postWake) // results of an earlier connection still wait for their acknowledgement

	g := newGroup(cancel)
	g.Go(func() error { return r.receiveClaims(claims) })
	g.Go(func() error { return r.sendCredits(ctx, c, claims) })
	g.Go(func() error { return r.sendHeartbeats(ctx, c, beats) })
	g.Go(func() error { return receive("Heartbeat", beats.Recv, r.onHeartbeat) })
	g.Go(func() error { return r.sendResults(ctx, c, posts) })
	g.Go(func() error { return receive("PostResult", posts.Recv, r.onAck) })
	g.Go(func() error {
		select {
		case <-r.drained:
			return errDrained
		case <-ctx.Done():
			return nil
		}
	})
	if err := g.Wait(); !errors.Is(err, errDrained) {
		return err
	}
	return nil
}

func (r *Runner) receiveClaims(claims schedulerv1.RunnerService_ClaimTaskClient) error {
	for {
		message, err := claims.Recv()
		if err == io.EOF && r.isDraining() {
			return nil // the scheduler ended the stream we half-closed
		}
		if err != nil {
			return streamError("ClaimTask", err)
		}
		switch m := message.Response.(type) {
		case *schedulerv1.ClaimTaskResponse_Task:
			r.onTask(m.Task)
		case *schedulerv1.ClaimTaskResponse_Drain:
			r.beginDrain("the scheduler asked: "+m.Drain.GetReason(), m.Drain.GetDeadline().AsTime())
		}
	}
}

// receive hands each message of a stream to handle until the stream fails.
func receive[T any](stream string, recv func() (*T, error), handle func(*T)) error {
	for {
		message, err := recv()
		if err != nil {
			return streamError(stream, err)
		}
		handle(message)
	}
}

func (r *Runner) sendCredits(ctx context.Context, c *connection, claims schedulerv1.RunnerService_ClaimTaskClient) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.claimWake:
		}
		r.mu.Lock()
		draining, credits := r.draining, r.credits
		r.credits = 0
		r.mu.Unlock()
		if draining {
			return claims.CloseSend() // no more tasks; the stream ends once the scheduler agrees
		}
		if credits > 0 {
			credit := &schedulerv1.ClaimCredit{Credits: credits}
			err := claims.Send(&schedulerv1.ClaimTaskRequest{Request: &schedulerv1.ClaimTaskRequest_Credit{Credit: credit}})
			if err != nil {
				return streamError("ClaimTask", err)
			}
		}
	}
}

func (r *Runner) sendHeartbeats(ctx context.Context, c *connection, beats schedulerv1.RunnerService_HeartbeatClient) error {
	for {
		r.mu.Lock()
		request := &schedulerv1.HeartbeatRequest{InstanceId: r.cfg.InstanceID}
		for id, a := range r.attempts {
			if a.stopped != "cancelled" && a.stopped != "lost" {
				request.AttemptIds = append(request.AttemptIds, id)
			}
		}
		interval := r.interval
		r.mu.Unlock()
		sort.Strings(request.AttemptIds)
		if err := beats.Send(request); err != nil {
			return streamError("Heartbeat", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		case <-c.beatWake:
		}
	}
}

func (r *Runner) sendResults(ctx context.Context, c *connection, posts schedulerv1.RunnerService_PostResultClient) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.postWake:
		}
		var unsent []*schedulerv1.PostResultRequest
		r.mu.Lock()
		for _, a := range r.attempts {
			if a.result != nil && a.sentOn != c && a.stopped != "cancelled" && a.stopped != "lost" {
				a.sentOn = c
				unsent = append(unsent, a.result)
			}
		}
		r.mu.Unlock()
		for _, request := range unsent {
			if err := posts.Send(request); err != nil {
				return streamError("PostResult", err)
			}
		}
	}
}

// --- plumbing ------------------------------------------------------------------------------

// streamError says which stream failed; refusals become a RefusedError.
func streamError(stream string, err error) error {
	if err == io.EOF {
		return fmt.Errorf("%s: the scheduler ended the stream", stream)
	}
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.Unimplemented, codes.NotFound:
		return RefusedError{fmt.Errorf("%s: %w", stream, err)}
	}
	return fmt.Errorf("%s: %w", stream, err)
}

// bearer sends the Runner's credential with every call ("authorization: Bearer <secret>").
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	if b == "" {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// group runs goroutines; the first error cancels the rest, and Wait returns it.
type group struct {
	wg     sync.WaitGroup
	once   sync.Once
	err    error
	cancel context.CancelFunc
}

func newGroup(cancel context.CancelFunc) *group { return &group{cancel: cancel} }

func (g *group) Go(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.once.Do(func() { g.err = err; g.cancel() })
		}
	}()
}

func (g *group) Wait() error {
	g.wg.Wait()
	return g.err
}
