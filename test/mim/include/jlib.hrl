%% Stand-in for MongooseIM's include/jlib.hrl.
-ifndef(JLIB_HRL).
-define(JLIB_HRL, true).

-include("exml.hrl").
-include("mongoose_ns.hrl").
-include("jid.hrl").

-record(iq, {id = <<>> :: binary(),
             type :: atom(), % get | set | result | error
             xmlns = <<>> :: binary(),
             lang = <<>> :: binary(),
             sub_el :: undefined | #xmlel{} | [#xmlel{}]}).

-endif.
