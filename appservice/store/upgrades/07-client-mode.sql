-- v6 -> v7: Client-mode bots (ordinary accounts)
-- The login each keeps across restarts (never a new device per start), and
-- where its /sync stands: next_batch is written in the same database
-- transaction as the events of the batch it ends.
CREATE TABLE opsbot_client_session (
    bot          TEXT   PRIMARY KEY,
    device_id    TEXT   NOT NULL,
    access_token TEXT   NOT NULL,
    next_batch   TEXT   NOT NULL DEFAULT '',
    updated_at   BIGINT NOT NULL
);
