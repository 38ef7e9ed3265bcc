%% @doc The supervisor of one instance's reporter (mod_event_pusher_instance), started
%% under ejabberd_sup with ejabberd_sup:start_child/1, as MongooseIM's async pools are.
%%
%% A supervisor of its own, not a child of ejabberd_sup directly: a reporter that
%% keeps dying exhausts this supervisor's restart intensity, not ejabberd_sup's, which
%% would take the whole node down. This supervisor then ends (not restarted: it is
%% `transient' in ejabberd_sup), the instance keeps delivering and counting, its
%% reports are held (bounded) in the NIF, and module stop handles them.
-module(mod_event_pusher_instance_sup).
-behaviour(supervisor).

-export([start_link/1, init/1]).

%% More than this many reporter restarts within the period ends the supervisor.
-define(MAX_RESTARTS, 10).
-define(PERIOD_S, 60).

-spec start_link({binary(), mod_event_pusher_instance:key(), module(),
                  counters:counters_ref()}) -> {ok, pid()} | ignore | {error, term()}.
start_link(Args) ->
    supervisor:start_link(?MODULE, Args).

-spec init({binary(), mod_event_pusher_instance:key(), module(), counters:counters_ref()}) ->
          {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({HostType, Key, Module, Handled}) ->
    Reporter = #{id => reporter,
                 start => {mod_event_pusher_instance, start_link,
                           [{HostType, Key, Module, Handled, self()}]},
                 restart => permanent,
                 shutdown => 5000,
                 type => worker,
                 modules => [mod_event_pusher_instance]},
    {ok, {#{strategy => one_for_one, intensity => ?MAX_RESTARTS, period => ?PERIOD_S},
          [Reporter]}}.
