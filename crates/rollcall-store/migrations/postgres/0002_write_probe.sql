-- One row that readiness checks rewrite: proof that a transaction can still
-- commit (a full disk or an I/O error fails it), not just that reads answer.
CREATE TABLE rollcall_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at BIGINT NOT NULL
);
