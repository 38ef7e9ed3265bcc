%% Stand-in for MongooseIM's include/mongoose_ns.hrl: only the namespaces the
%% event pusher uses (XEP-0357 push, XEP-0060 pubsub, XEP-0004 data forms).
-ifndef(MONGOOSE_NS_HRL).
-define(MONGOOSE_NS_HRL, true).

-define(NS_PUSH, <<"urn:xmpp:push:0">>).
-define(NS_PUBSUB, <<"http://jabber.org/protocol/pubsub">>).
-define(NS_PUBSUB_PUB_OPTIONS, <<"http://jabber.org/protocol/pubsub#publish-options">>).
-define(NS_XDATA, <<"jabber:x:data">>).

-endif.
