-- v2 -> v3: Cron job runs
CREATE TABLE opsbot_cron (
    job_key  TEXT   PRIMARY KEY,
    last_run BIGINT NOT NULL
);
