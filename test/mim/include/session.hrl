%% Stand-in for MongooseIM's include/session.hrl: one row per c2s session.
-ifndef(SESSION_HRL).
-define(SESSION_HRL, true).

-record(session, {sid :: {integer(), pid()},            % {Microseconds, C2SPid}
                  usr :: {binary(), binary(), binary()}, % {LUser, LServer, LResource}
                  us :: {binary(), binary()},            % {LUser, LServer}
                  priority :: integer() | undefined,     % undefined = not available
                  info = #{} :: #{atom() => term()}}).

-endif.
