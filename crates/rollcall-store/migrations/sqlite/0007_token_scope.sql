-- The scope of an enroll token: which workers it may register, as JSON
-- {"machines": [patterns] | null, "labels": {key: value}}. NULL: unscoped
-- (any worker), as every token was before.
ALTER TABLE tokens ADD COLUMN scope TEXT;
