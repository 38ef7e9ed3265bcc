%% Stand-in for mongoose_jid 2.x's include/jid.hrl: only the three normalised
%% (prepped) parts are kept; 2.x has no raw user/server/resource fields.
-ifndef(JID_HRL).
-define(JID_HRL, true).

-record(jid, {luser = <<>> :: binary(),
              lserver = <<>> :: binary(),
              lresource = <<>> :: binary()}).

-endif.
