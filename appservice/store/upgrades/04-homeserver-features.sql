-- v3 -> v4: What the homeserver was seen pushing in transactions
-- (msc2409: to-device events; msc3202: device lists and one-time-key counts),
-- so that encryption.mode auto keeps using them across restarts.
CREATE TABLE opsbot_homeserver_feature (
    feature TEXT   PRIMARY KEY,
    seen_at BIGINT NOT NULL
);
