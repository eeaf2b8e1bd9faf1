package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	schedulerv1 "github.com/heatglobal/heat-scheduler/gen/go/heat/scheduler/v1"
	"google.golang.org/protobuf/types/known/structpb"
)

// Tasks: running them, deciding their outcomes, and the scheduler's answers about them.

func (r *Runner) onTask(task *schedulerv1.Task) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.adoptInterval(task.GetHeartbeatInterval().AsDuration())
	if _, held := r.attempts[task.AttemptId]; held {
		r.log.Warn("task received twice; ignoring", "attempt_id", task.AttemptId)
		r.grant(1)
		return
	}
	a := &attempt{task: task, counts: !r.draining && r.freeCapacity() > 0}
	r.attempts[task.AttemptId] = a
	if !a.counts {
		reason := "over capacity"
		if r.draining {
			reason = "draining"
		}
		r.log.Warn("handing back a task", "reason", reason, "attempt_id", task.AttemptId)
		r.settle(a, release(task.AttemptId, reason))
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	if task.AttemptDeadline != nil {
		ctx, cancel = context.WithDeadline(context.Background(), task.AttemptDeadline.AsTime())
	}
	a.cancel = cancel
	r.log.Info("task started", "attempt_id", task.AttemptId, "session", task.Session,
		"node_key", task.NodeKey, "template", task.NodeTemplate, "attempt", task.Attempt)
	go r.work(ctx, a)
}

func (r *Runner) work(ctx context.Context, a *attempt) {
	started := time.Now()
	outcome := r.process(ctx, a.task)
	a.cancel()
	r.mu.Lock()
	defer r.mu.Unlock()
	if a.stopped != "" {
		r.log.Info("task stopped", "attempt_id", a.task.AttemptId, "reason", a.stopped)
		if a.stopped != "draining" {
			r.forget(a)
		}
		return
	}
	kind := "success"
	if f := outcome.GetFailure(); f != nil {
		kind = strings.ToLower(strings.TrimPrefix(f.Kind.String(), "FAILURE_KIND_")) + " failure: " + f.Message
	}
	r.log.Info("task finished", "attempt_id", a.task.AttemptId, "node_key", a.task.NodeKey,
		"outcome", kind, "duration", time.Since(started).Round(time.Millisecond))
	r.settle(a, outcome)
}

// process runs one attempt and says what to post.
func (r *Runner) process(ctx context.Context, task *schedulerv1.Task) *schedulerv1.PostResultRequest {
	p := r.processors[task.NodeTemplate]
	if p == nil {
		return failure(task.AttemptId, true, fmt.Errorf(
			"this instance has no processor for node template %q (it has: %s)",
			task.NodeTemplate, strings.Join(r.templates(), ", ")))
	}
	inputs := make(map[string]any, len(task.Inputs))
	for key, value := range task.Inputs {
		inputs[key] = value.AsInterface()
	}
	config := task.GetConfig().AsMap()
	if err := p.Validate(inputs, config); err != nil {
		return failure(task.AttemptId, true, fmt.Errorf("invalid task: %w", err))
	}
	out, err := p.Process(ctx, inputs, config)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return failure(task.AttemptId, false, errors.New("the attempt timed out"))
	}
	if err != nil {
		var permanent PermanentError
		return failure(task.AttemptId, errors.As(err, &permanent), err)
	}
	outputs, err := jsonValue(out)
	if err != nil {
		return failure(task.AttemptId, true, fmt.Errorf("outputs are not JSON: %w", err))
	}
	return &schedulerv1.PostResultRequest{
		AttemptId: task.AttemptId,
		Outcome: &schedulerv1.PostResultRequest_Success{
			Success: &schedulerv1.TaskSuccess{Outputs: outputs},
		},
	}
}

// jsonValue turns what Process returned (maps, slices, structs with json tags…) into a Value.
func jsonValue(out any) (*structpb.Value, error) {
	raw, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	var plain any
	if err := json.Unmarshal(raw, &plain); err != nil {
		return nil, err
	}
	return structpb.NewValue(plain)
}

func failure(attemptID string, permanent bool, err error) *schedulerv1.PostResultRequest {
	kind := schedulerv1.FailureKind_FAILURE_KIND_RETRYABLE
	if permanent {
		kind = schedulerv1.FailureKind_FAILURE_KIND_PERMANENT
	}
	return &schedulerv1.PostResultRequest{
		AttemptId: attemptID,
		Outcome: &schedulerv1.PostResultRequest_Failure{
			Failure: &schedulerv1.TaskFailure{Kind: kind, Message: err.Error()},
		},
	}
}

func release(attemptID, reason string) *schedulerv1.PostResultRequest {
	return &schedulerv1.PostResultRequest{
		AttemptId: attemptID,
		Outcome: &schedulerv1.PostResultRequest_Release{
			Release: &schedulerv1.TaskRelease{Reason: reason},
		},
	}
}

// --- the scheduler's answers (called with r.mu unlocked) -----------------------------------

func (r *Runner) onAck(ack *schedulerv1.PostResultResponse) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.attempts[ack.AttemptId]
	if a == nil || a.result == nil {
		return
	}
	if ack.Status != schedulerv1.ResultStatus_RESULT_STATUS_ACCEPTED {
		r.log.Warn("the scheduler did not accept the result", "attempt_id", ack.AttemptId,
			"verdict", ack.Status.String(), "message", ack.Message)
	}
	r.forget(a)
}

func (r *Runner) onHeartbeat(reply *schedulerv1.HeartbeatResponse) {
	r.mu.Lock()
	r.adoptInterval(reply.GetHeartbeatInterval().AsDuration())
	for _, c := range reply.Cancellations {
		r.stop(c.AttemptId, "cancelled", c.Reason)
	}
	for _, id := range reply.LostAttemptIds {
		r.stop(id, "lost", "the lease is gone; a result would be rejected")
	}
	r.mu.Unlock()
	if reply.Drain != nil {
		r.beginDrain("the scheduler asked: "+reply.Drain.Reason, reply.Drain.GetDeadline().AsTime())
	}
}

// --- bookkeeping (r.mu held) ---------------------------------------------------------------

func (r *Runner) freeCapacity() int32 {
	used := 0
	for _, a := range r.attempts {
		if a.counts {
			used++
		}
	}
	return int32(max(0, r.cfg.Capacity-used))
}

func (r *Runner) adoptInterval(d time.Duration) {
	if d > 0 && d != r.interval {
		r.interval = max(d, 50*time.Millisecond)
		if r.conn != nil {
			wake(r.conn.beatWake)
		}
	}
}

func (r *Runner) grant(credits int32) {
	if r.draining || r.conn == nil {
		return // the next ClaimStart offers the free capacity afresh
	}
	r.credits += credits
	wake(r.conn.claimWake)
}

// settle decides an attempt's outcome; it is posted until acknowledged.
func (r *Runner) settle(a *attempt, result *schedulerv1.PostResultRequest) {
	a.result = result
	if r.conn != nil {
		wake(r.conn.postWake)
	}
	wake(r.changed)
}

// forget drops a held task and gives its capacity back.
func (r *Runner) forget(a *attempt) {
	if r.attempts[a.task.AttemptId] != a {
		return
	}
	delete(r.attempts, a.task.AttemptId)
	if a.counts {
		r.grant(1)
	}
	wake(r.changed)
}

// stop ends a task the scheduler no longer wants: nothing is posted for it.
func (r *Runner) stop(attemptID, reason, why string) {
	a := r.attempts[attemptID]
	if a == nil || a.stopped == "cancelled" || a.stopped == "lost" {
		return
	}
	r.log.Info("stopping task", "attempt_id", attemptID, "reason", reason, "why", why)
	a.stopped = reason
	if a.result == nil && a.cancel != nil {
		a.cancel() // work() forgets it once Process has returned
		return
	}
	r.forget(a)
}
