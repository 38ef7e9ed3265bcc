%% The events mod_event_pusher_nif:push/2 takes: the one definition of the contract
%% between the backend modules and the Rust instances. native/pusher_nif/src/contract.rs
%% mirrors each record with rustler's NifRecord derive (same names, same field order);
%% a field that does not decode is named in {error, {bad_event, Field}}.
-ifndef(MOD_EVENT_PUSHER_NIF_HRL).
-define(MOD_EVENT_PUSHER_NIF_HRL, true).

%% An HTTP POST to the pool's host: path, headers, body and the tag reports carry.
%% A body given as {form, Fields} is form-encoded (as cow_qs:qs/1) by the delivery
%% worker, off the routing path.
-record(http_event, {path :: binary(),
                     headers :: [{binary(), binary()}],
                     body :: binary() | {form, [{binary(), binary()}]},
                     tag :: binary()}).

%% RabbitMQ: a presence change, to the presence exchange with routing key bare_jid...
-record(rabbit_presence, {user_jid :: binary(), bare_jid :: binary(), present :: boolean()}).
%% ...or a chat message, to the chat or groupchat exchange with routing key
%% <<RoutingKey/binary, ".", Topic/binary>>.
-record(rabbit_chat, {kind :: chat | groupchat,
                      direction :: in | out,
                      from_jid :: binary(),
                      to_jid :: binary(),
                      message :: binary(),
                      routing_key :: binary()}).

%% Amazon SNS message attributes: name, data type, value.
-type sns_attribute() :: {binary(), string | number | binary, binary()}.
-record(sns_presence, {topic_arn :: binary(), user_id :: binary(), present :: boolean(),
                       attributes :: [sns_attribute()]}).
-record(sns_message, {topic_arn :: binary(), from_user_id :: binary(), to_user_id :: binary(),
                      message :: binary(), attributes :: [sns_attribute()]}).

%% XEP-0357: the publish of a notification for user to the pubsub service's node, with
%% the summary fields and the publish-options the registration gave. Held whole by the
%% instance and handed back, as {mod_event_pusher_nif, route, Id, #push_publish{}},
%% when its turn comes: mod_event_pusher_push builds the IQ then, once, off the hook
%% path, and routes it.
-record(push_publish, {user :: jid:jid(),
                       pubsub :: jid:jid(),
                       node :: binary(),
                       payload :: [{binary(), binary()}],
                       options :: #{binary() => binary()},
                       tag :: binary()}).

%% The configurations a start takes: mod_event_pusher_nif:start_<backend>/3 with
%% #instance_config{}, the backend's record and the reporter's pid. Durations are in
%% milliseconds; a path <<>> means "not set".

%% Every instance: its queue, its retry policy (jitter: equal, or minus_base as
%% MongooseIM's SNS backend) and its deliveries at once.
-record(instance_config, {max_events :: pos_integer(),
                          max_bytes :: pos_integer(),
                          overflow :: drop_newest | drop_oldest,
                          max_attempts :: pos_integer(),
                          base_backoff_ms :: non_neg_integer(),
                          max_backoff_ms :: non_neg_integer(),
                          retry_deadline_ms :: non_neg_integer(),
                          jitter = equal :: equal | minus_base,
                          concurrency :: pos_integer()}).

-record(http_config, {host :: binary(),
                      path_prefix :: binary(),
                      request_timeout_ms :: non_neg_integer(),
                      verify_mode :: peer | selfsigned_peer | none,
                      cacertfile = <<>> :: binary(),
                      certfile = <<>> :: binary(),
                      keyfile = <<>> :: binary(),
                      server_name_indication = true :: boolean()}).

%% sent_topic and recv_topic: the routing-key suffixes of the chat exchanges.
-record(rabbit_exchange, {name :: binary(),
                          type :: binary(),
                          durable :: boolean(),
                          persistent :: boolean(),
                          sent_topic = <<>> :: binary(),
                          recv_topic = <<>> :: binary()}).

-record(rabbit_config, {host :: binary(),
                        port :: 0..65535,
                        username :: binary(),
                        password :: binary(),
                        virtual_host :: binary(),
                        tls :: boolean(),
                        cacertfile = <<>> :: binary(),
                        presence_exchange :: #rabbit_exchange{},
                        chat_msg_exchange :: #rabbit_exchange{},
                        groupchat_msg_exchange :: #rabbit_exchange{},
                        confirms_enabled :: boolean(),
                        confirm_timeout_ms :: non_neg_integer(),
                        connect_timeout_ms :: non_neg_integer(),
                        reconnect_base_delay_ms :: non_neg_integer(),
                        reconnect_max_delay_ms :: non_neg_integer(),
                        max_message_bytes :: pos_integer()}).

-record(sns_config, {sns_host :: binary(),
                     region :: binary(),
                     access_key_id :: binary(),
                     secret_access_key :: binary(),
                     request_timeout_ms :: non_neg_integer(),
                     connect_timeout_ms :: non_neg_integer(),
                     batching :: boolean()}).

-record(push_config, {publish_timeout_ms :: non_neg_integer()}).

-endif.
