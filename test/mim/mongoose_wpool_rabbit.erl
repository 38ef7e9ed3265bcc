%% Stand-in for MongooseIM's mongoose_wpool_rabbit, the rabbit pool type: only the
%% instrumentation its workers (mongoose_rabbit_worker) declare, which
%% mongoose_wpool sets up when the pool starts and mod_event_pusher_rabbit reports to.
-module(mongoose_wpool_rabbit).

-export([instrumentation/2]).

-spec instrumentation(binary() | global, atom()) -> [mongoose_instrument:spec()].
instrumentation(HostTypeOrGlobal, Tag) ->
    Labels = #{host_type => HostTypeOrGlobal, pool_tag => Tag},
    [{wpool_rabbit_connections, Labels,
      #{metrics => #{active => counter, opened => spiral, closed => spiral, failed => spiral}}},
     {wpool_rabbit_messages_published, Labels,
      #{metrics => #{count => spiral, failed => spiral, timeout => spiral,
                     time => histogram, size => histogram}}}].
