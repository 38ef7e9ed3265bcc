-- MySQL/MariaDB schema of mod_event_pusher_push's rdbms backend (MongooseIM 6.4's
-- event_pusher_push_subscription table and index), e.g.
-- mysql -u root mongooseim < mysql.sql
CREATE TABLE event_pusher_push_subscription (
     owner_jid VARCHAR(250),
     node VARCHAR(250),
     pubsub_jid VARCHAR(250),
     form JSON NOT NULL,
     created_at BIGINT NOT NULL,
     PRIMARY KEY(owner_jid, node, pubsub_jid)
) CHARACTER SET utf8mb4
  ROW_FORMAT=DYNAMIC;

CREATE INDEX i_event_pusher_push_subscription ON event_pusher_push_subscription(owner_jid);
