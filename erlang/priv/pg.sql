-- PostgreSQL schema of mod_event_pusher_push's rdbms backend (MongooseIM 6.4's
-- event_pusher_push_subscription table and index). Load it into MongooseIM's
-- database, e.g. psql -h 127.0.0.1 -U postgres mongooseim -f pg.sql
CREATE TABLE event_pusher_push_subscription (
     owner_jid VARCHAR(250),
     node VARCHAR(250),
     pubsub_jid VARCHAR(250),
     form JSON NOT NULL,
     created_at BIGINT NOT NULL,
     PRIMARY KEY(owner_jid, node, pubsub_jid)
);

CREATE INDEX i_event_pusher_push_subscription ON event_pusher_push_subscription(owner_jid);
