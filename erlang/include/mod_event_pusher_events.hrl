%% Events produced by mod_event_pusher_hook_translator (same records as MongooseIM 6.4).
-ifndef(MOD_EVENT_PUSHER_EVENTS_HRL).
-define(MOD_EVENT_PUSHER_EVENTS_HRL, true).

-include("jlib.hrl").

-record(user_status_event, {jid :: jid:jid(), status :: online | offline}).
-record(chat_event, {type :: headline | normal | chat | groupchat,
                     direction :: in | out,
                     from :: jid:jid(),
                     to :: jid:jid(),
                     packet :: exml:element()}).
-record(unack_msg_event, {to :: jid:jid()}).

-endif.
