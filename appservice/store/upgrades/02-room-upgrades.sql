-- v1 -> v2: Room upgrades waiting for the bots to join the new room
CREATE TABLE opsbot_room_upgrade (
    old_room_id TEXT   NOT NULL,
    new_room_id TEXT   PRIMARY KEY,
    created_at  BIGINT NOT NULL
);
