-- The outcome each remembered verdict answered (a different outcome for the same attempt is
-- refused, not answered with that verdict), and the encoded size of each node's outputs (a
-- claim knows what its task's inputs weigh without reading them).

ALTER TABLE results ADD COLUMN outcome text;

ALTER TABLE nodes ADD COLUMN outputs_bytes bigint;
