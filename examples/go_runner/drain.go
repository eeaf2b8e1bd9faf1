package main

import "time"

// Draining: stop claiming, let held tasks finish until a deadline, hand back the rest, wait
// for the acknowledgements, exit.

func (r *Runner) isDraining() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.draining
}

// beginDrain stops claiming; held tasks get until HEAT_DRAIN_TIMEOUT (or the scheduler's
// deadline, if sooner) to finish, then the rest is handed back. A second call while draining
// hands back at once when it comes from a signal.
func (r *Runner) beginDrain(reason string, deadline time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	by := time.Now().Add(r.cfg.DrainTimeout)
	if !deadline.IsZero() && deadline.Unix() > 0 && deadline.Before(by) {
		by = deadline
	}
	if r.draining {
		if deadline.IsZero() {
			r.log.Warn("stopped again while draining: handing back the held tasks now")
			by = time.Now()
		}
		if by.Before(r.drainBy) {
			r.drainBy = by
			wake(r.changed)
		}
		return
	}
	r.draining, r.drainBy = true, by
	r.log.Info("draining: claiming stopped", "reason", reason, "running", r.running(), "until", by.Format(time.RFC3339Nano))
	if r.conn != nil {
		wake(r.conn.claimWake)
	}
	go r.drain()
}

func (r *Runner) running() int {
	n := 0
	for _, a := range r.attempts {
		if a.result == nil && a.stopped == "" {
			n++
		}
	}
	return n
}

func (r *Runner) drain() {
	// 1. Held tasks finish until the drain deadline.
	for {
		r.mu.Lock()
		running, left := r.running(), time.Until(r.drainBy)
		r.mu.Unlock()
		if running == 0 || left <= 0 {
			break
		}
		select {
		case <-r.changed:
		case <-time.After(left):
		}
	}
	// 2. What still runs is cancelled and handed back (not counted as an attempt).
	r.mu.Lock()
	for _, a := range r.attempts {
		if a.result == nil && a.stopped == "" {
			r.log.Info("handing back task (drain deadline)", "attempt_id", a.task.AttemptId)
			a.stopped = "draining"
			a.cancel()
			r.settle(a, release(a.task.AttemptId, "draining"))
		}
	}
	r.mu.Unlock()
	// 3. The scheduler acknowledges every result and hand-back.
	defer close(r.drained)
	give := time.After(ackGrace)
	for waiting := r.held(); waiting > 0; waiting = r.held() {
		select {
		case <-r.changed:
		case <-give:
			r.log.Warn("results not acknowledged in time; exiting anyway", "waiting", waiting)
			return
		}
	}
}

func (r *Runner) held() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.attempts)
}
