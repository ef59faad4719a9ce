-- v5 -> v6: Command descriptions published into rooms (MSC4391)
-- One row per description a bot has in a room's state, with a digest of
-- its content, so that a start or reload sends only what changed and
-- empties the descriptions of commands that are gone.
CREATE TABLE opsbot_command_description (
    room_id   TEXT NOT NULL,
    bot       TEXT NOT NULL,
    state_key TEXT NOT NULL,
    digest    TEXT NOT NULL,
    PRIMARY KEY (room_id, bot, state_key)
);
