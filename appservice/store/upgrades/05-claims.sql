-- v4 -> v5: Inbox claims under leadership epochs
-- claimed_epoch is the leadership epoch (opsbot_leader) whose leader took
-- the event into its queues, 0 while nobody did. A leader picks up every
-- unfinished event of an earlier epoch, and re-runs it carefully: the
-- earlier leader may have acted on it already.
ALTER TABLE opsbot_inbox ADD COLUMN claimed_epoch BIGINT NOT NULL DEFAULT 0;
DROP INDEX opsbot_inbox_pending_idx;
CREATE INDEX opsbot_inbox_claim_idx ON opsbot_inbox (claimed_epoch, seq) WHERE NOT done;
