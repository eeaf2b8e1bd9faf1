-- A Runner's own Kubernetes pod template (tolerations, a GPU, a relaxed securityContext).
ALTER TABLE runners
    ADD COLUMN pod_template jsonb CHECK (jsonb_typeof(pod_template) = 'object');
