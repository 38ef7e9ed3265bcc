%% Our modules as the real MongooseIM 6.4 runs them, where it differs from our own
%% TOML-driven suites:
%% - at boot, outgoing pools start (and register their instrumentation) before the
%%   modules, so the rabbit pool's metrics exist before mod_event_pusher_rabbit starts,
%%   for `scope = "global"' and `scope = "host_type"' alike; a failing module fails the
%%   boot as a whole;
%% - modules are started with the option maps MongooseIM's own parser produces
%%   (test/mim-6.4/*.expected.terms: MongooseIM's keys only, none of our additive
%%   options), alone, through mod_event_pusher, and at run time through
%%   mongoose_modules:ensure_started/3.
%% Every case checks what arrived at the real server: RabbitMQ on 127.0.0.1:5672, an
%% HTTP listener, moto's SNS with SQS queues subscribed, a pubsub service.
-module(mim_dropin_SUITE).
-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("jid.hrl").
-include("mod_event_pusher_events.hrl").

-define(HT, <<"localhost">>).
-define(BACKENDS, [http, rabbit, sns, push]).
-define(PUBSUB, <<"pubsub.push.example">>).
-define(DYNAMIC_HT, <<"dynamic type">>).
-define(DYNAMIC_DOMAIN, <<"dyn.example">>).

all() ->
    [stand_in_refuses_a_duplicate_event_as_mongooseim_does,
     rabbit_global_pool_metrics_carry_the_global_label,
     rabbit_host_type_pool_boots_and_metrics_carry_the_host_type,
     rabbit_connection_in_the_module_section_needs_no_pool,
     rabbit_without_a_connection_fails_the_boot_as_a_whole,
     every_backend_boots_beside_every_pool_type,
     every_backend_delivers_for_a_domain_of_a_dynamic_host_type,
     replace_modules_restarts_with_the_new_options_and_drains_the_old,
     {group, mongooseim_option_maps}].

groups() ->
    [{mongooseim_option_maps, [],
      [mongooseim_maps_start_each_backend_alone,
       mongooseim_maps_start_each_backend_through_mod_event_pusher,
       mongooseim_maps_start_each_backend_at_run_time]}].

suite() ->
    [{timetrap, {seconds, 120}}].

init_per_suite(Config) ->
    {ok, _} = amqp_probe:executable(),
    ok = push_client:start_mnesia(filename:join(?config(priv_dir, Config), "mnesia")),
    {ok, Emulator} = sns_emulator:start(),
    %% Once: each setup would subscribe the queue to the topic again.
    Topics = sns_emulator:setup(Emulator, [<<"user_presence_updated">>, <<"user_message_sent">>,
                                           <<"user_messagegroup_sent">>]),
    [{emulator, Emulator}, {topics, Topics} | Config].

end_per_suite(Config) ->
    sns_emulator:stop(?config(emulator, Config)),
    push_client:stop_mnesia().

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    Stopped = test_wait:cleanup(fun mongoose_host:stop/0, 20000),
    %% The push backend creates the table when it first starts.
    case lists:member(push_subscription, mnesia:system_info(tables)) of
        true -> {atomic, ok} = mnesia:clear_table(push_subscription), ok;
        false -> ok
    end,
    Stopped.

%%% The stand-in is as strict as MongooseIM

stand_in_refuses_a_duplicate_event_as_mongooseim_does(_Config) ->
    ok = mongoose_host:start([{hosts, [?HT]}, {host_types, []},
                              {default_server_domain, ?HT}, {outgoing_pools, []}]),
    Spec = {some_event, #{host_type => ?HT}, #{metrics => #{count => spiral}}},
    ok = mongoose_instrument:set_up([Spec]),
    ?assertError(#{what := event_already_registered, event_name := some_event},
                 mongoose_instrument:set_up([Spec])),
    ?assertError(#{what := inconsistent_labels},
                 mongoose_instrument:set_up([{some_event, #{pool_tag => x},
                                              #{metrics => #{count => spiral}}}])),
    mongoose_instrument:tear_down([Spec]).

%%% Rabbit pools and their metrics

%% MongooseIM's pool registered wpool_rabbit_* for `global' before the module started;
%% ours report there, and publishes arrive.
rabbit_global_pool_metrics_carry_the_global_label(_Config) ->
    boot_rabbit(global_pool(#{}), #{}),
    Labels = #{host_type => global, pool_tag => event_pusher},
    ?assert(mongoose_instrument:is_set_up(wpool_rabbit_messages_published, Labels)),
    ?assertNot(mongoose_instrument:is_set_up(wpool_rabbit_messages_published,
                                             #{host_type => ?HT, pool_tag => event_pusher})),
    publish_and_check(Labels),
    %% MongooseIM's pool owns the events: the module's stop leaves them registered.
    ok = gen_mod:stop_module(?HT, mod_event_pusher_rabbit),
    ?assert(mongoose_instrument:is_set_up(wpool_rabbit_messages_published, Labels)).

%% With `scope = "host_type"' the pool's labels are the module's: the start used to
%% fail with event_already_registered, which halts a MongooseIM node at boot.
rabbit_host_type_pool_boots_and_metrics_carry_the_host_type(_Config) ->
    boot_rabbit(global_pool(#{scope => host_type}), #{}),
    Labels = #{host_type => ?HT, pool_tag => event_pusher},
    ?assertEqual([{rabbit, ?HT, event_pusher}], mongoose_wpool:get_pools()),
    publish_and_check(Labels).

%% No pool section (so MongooseIM opens no idle AMQP connections): the connection
%% comes from the module's own section, and the module registers the pool metrics
%% itself, for its host type, and tears them down at stop.
rabbit_connection_in_the_module_section_needs_no_pool(_Config) ->
    Connection = #{host => "127.0.0.1", port => 5672, username => <<"guest">>,
                   password => <<"guest">>, confirms_enabled => true},
    boot_rabbit([], #{connection => Connection}),
    Labels = #{host_type => ?HT, pool_tag => event_pusher},
    ?assertEqual([], mongoose_wpool:get_pools()),
    publish_and_check(Labels),
    ok = gen_mod:stop_module(?HT, mod_event_pusher_rabbit),
    ?assertNot(mongoose_instrument:is_set_up(wpool_rabbit_messages_published, Labels)).

%% Neither a pool nor a connection: the start fails naming the missing section, and,
%% as at MongooseIM's boot, nothing stays started (http started before it is stopped).
rabbit_without_a_connection_fails_the_boot_as_a_whole(_Config) ->
    Listener = test_http_listener:start(),
    Opts = base_opts(http_pools(Listener))
        ++ [{{modules, ?HT}, #{mod_event_pusher_http => mim_opts(http),
                               mod_event_pusher_rabbit => mim_opts(rabbit)}}],
    log_guard:expect(#{what => module_start_failed, module => mod_event_pusher_rabbit}),
    try
        ?assertError(#{what := event_pusher_rabbit_start_failed,
                       reason := #{what := pool_not_configured}},
                     mongoose_host:start(Opts)),
        ?assertNot(gen_mod:is_running(?HT, mod_event_pusher_http)),
        ?assertEqual(undefined, mod_event_pusher_instance:instance(?HT, {http, http_pool})),
        ?assertEqual([], mongoose_wpool:get_pools())
    after
        test_http_listener:stop(Listener)
    end.

%% Every pool type of MongooseIM's outgoing_pools.toml (rabbit with host_type scope
%% among them) and every backend: nothing we register clashes with MongooseIM.
every_backend_boots_beside_every_pool_type(Config) ->
    {ok, Expected} = file:consult(mim_file("outgoing_pools.expected.terms")),
    {outgoing_pools, MimPools} = lists:keyfind(outgoing_pools, 1, Expected),
    Listener = test_http_listener:start(),
    try
        Modules = maps:from_list([{backend_module(B), local_opts(B, Config)} || B <- ?BACKENDS]),
        ok = mongoose_host:start(base_opts(MimPools ++ http_pools(Listener))
                                 ++ [{{modules, ?HT}, Modules#{mod_event_pusher =>
                                                                   backends_of(Modules)}}]),
        [?assert(gen_mod:is_running(?HT, backend_module(B))) || B <- ?BACKENDS],
        ?assert(lists:member({rabbit, ?HT, event_pusher}, mongoose_wpool:get_pools()))
    after
        test_http_listener:stop(Listener)
    end.

%% Dynamic domains (MongooseIM 6.4.0 supports none for the event pusher; we do):
%% every backend configured for a host type of `host_types' delivers for its domain.
%% The rabbit pool's `host_type' scope gives that host type its own pool.
every_backend_delivers_for_a_domain_of_a_dynamic_host_type(Config) ->
    Listener = test_http_listener:start(),
    try
        Modules = maps:from_list([{backend_module(B), local_opts(B, Config)} || B <- ?BACKENDS]),
        ok = mongoose_host:start(
               [{hosts, [?HT]}, {host_types, [?DYNAMIC_HT]}, {default_server_domain, ?HT},
                {outgoing_pools, [rabbit_pool() | http_pools(Listener)]},
                {{modules, ?HT}, #{}},
                {{modules, ?DYNAMIC_HT}, Modules#{mod_event_pusher => backends_of(Modules)}}]),
        ok = mongoose_domain_api:insert_domain(?DYNAMIC_DOMAIN, ?DYNAMIC_HT),
        ?assert(lists:member({rabbit, ?DYNAMIC_HT, event_pusher}, mongoose_wpool:get_pools())),
        [deliver_and_check(B, through_mod_event_pusher, server_for(B, Listener), Config,
                           {?DYNAMIC_HT, ?DYNAMIC_DOMAIN}) || B <- ?BACKENDS]
    after
        test_http_listener:stop(Listener)
    end.

%% A configuration reload as MongooseIM's tests do it: the handler's new path is used
%% from then on, and what the old instance still held was delivered (drained) first.
replace_modules_restarts_with_the_new_options_and_drains_the_old(_Config) ->
    Listener = test_http_listener:start(),
    try
        Old = mim_opts(http),
        ok = mongoose_host:start(base_opts(http_pools(Listener))
                                 ++ [{{modules, ?HT}, #{mod_event_pusher => #{http => Old},
                                                        mod_event_pusher_http => Old}}]),
        Chat = fun(Body) -> hook_driver:send(?HT, <<"chat">>, <<"alice@localhost/r">>,
                                             <<"bob@localhost">>, Body) end,
        Chat(<<"before">>),
        New = Old#{handlers := [H#{path := <<"changed">>} || H <- maps:get(handlers, Old)]},
        ok = mongoose_modules:replace_modules(?HT, [], #{mod_event_pusher => #{http => New}}),
        ?assertEqual(New, gen_mod:get_module_opts(?HT, mod_event_pusher_http)),
        Chat(<<"after">>),
        {ok, Requests} = test_http_listener:wait_for_requests(Listener, 2, 10000),
        ?assertEqual([{<<"/changed">>, <<"after">>}, {<<"/notifications">>, <<"before">>}],
                     lists:sort([{Path, proplists:get_value(<<"message">>,
                                                            uri_string:dissect_query(Body))}
                                 || #{path := Path, body := Body} <- Requests]))
    after
        test_http_listener:stop(Listener)
    end.

server_for(http, Listener) -> Listener;
server_for(_Backend, _Listener) -> none.

%%% MongooseIM's own option maps

mongooseim_maps_start_each_backend_alone(Config) ->
    [check_backend(Backend, alone, Config) || Backend <- ?BACKENDS].

mongooseim_maps_start_each_backend_through_mod_event_pusher(Config) ->
    [check_backend(Backend, through_mod_event_pusher, Config) || Backend <- ?BACKENDS].

mongooseim_maps_start_each_backend_at_run_time(Config) ->
    [check_backend(Backend, ensure_started, Config) || Backend <- ?BACKENDS].

%% Starts the backend with MongooseIM's map (only the server addresses changed, the
%% keys exactly MongooseIM's), delivers one event and checks it at the server.
check_backend(Backend, How, Config) ->
    ct:log("~p ~p", [Backend, How]),
    Opts = local_opts(Backend, Config),
    ?assertEqual(lists:sort(maps:keys(mim_opts(Backend))), lists:sort(maps:keys(Opts))),
    Server = start_server(Backend, Config),
    try
        Module = backend_module(Backend),
        Base = base_opts(pools(Backend, Server)),
        case How of
            alone ->
                ok = mongoose_host:start(Base ++ [{{modules, ?HT}, #{Module => Opts}}]);
            through_mod_event_pusher ->
                ok = mongoose_host:start(Base ++ [{{modules, ?HT},
                                                   #{mod_event_pusher => #{Backend => Opts},
                                                     Module => Opts}}]);
            ensure_started ->
                ok = mongoose_host:start(Base ++ [{{modules, ?HT}, #{}}]),
                {started, _} = mongoose_modules:ensure_started(?HT, Module, Opts)
        end,
        deliver_and_check(Backend, How, Server, Config),
        ok = test_wait:bounded(fun mongoose_host:stop/0, 20000)
    after
        stop_server(Backend, Server)
    end.

%% The event goes through the hooks when mod_event_pusher runs, else straight to the
%% backend's push_event/2, as another module of MongooseIM's would call it. Users are
%% of Domain, a domain of host type HT.
deliver_and_check(Backend, How, Server, Config) ->
    deliver_and_check(Backend, How, Server, Config, {?HT, ?HT}).

deliver_and_check(http, How, Listener, _Config, {HT, Domain}) ->
    User = unique_user(),
    From = <<User/binary, "@", Domain/binary, "/r">>,
    To = <<"bob@", Domain/binary>>,
    event(How, HT, fun() -> hook_driver:send(HT, <<"chat">>, From, To, <<"hello">>) end,
          mod_event_pusher_http, chat_event(in, From, To, <<"hello">>)),
    {ok, [#{path := Path, body := Body}]} = test_http_listener:wait_for_requests(Listener, 1,
                                                                                 10000),
    ?assertEqual(<<"/notifications">>, Path),
    ?assertEqual([{<<"author">>, User}, {<<"server">>, Domain}, {<<"receiver">>, <<"bob">>},
                  {<<"message">>, <<"hello">>}],
                 uri_string:dissect_query(Body));
deliver_and_check(rabbit, How, none, _Config, {HT, Domain}) ->
    Bare = <<(unique_user())/binary, "@", Domain/binary>>,
    Jid = <<Bare/binary, "/r">>,
    %% MongooseIM's default exchange names are shared: bound to this user's key only.
    Probe = amqp_probe:start([{<<"presence">>, Bare}]),
    try
        event(How, HT, fun() -> hook_driver:presence(HT, Jid, online) end,
              mod_event_pusher_rabbit, #user_status_event{jid = jid:from_binary(Jid),
                                                          status = online}),
        {ok, [#{exchange := <<"presence">>, payload := Payload}]} =
            amqp_probe:wait_for_messages(Probe, 1, 10000),
        ?assertEqual(#{<<"user_id">> => Jid, <<"present">> => true},
                     jiffy:decode(Payload, [return_maps]))
    after
        amqp_probe:stop(Probe)
    end;
deliver_and_check(sns, How, none, Config, {HT, Domain}) ->
    Bare = <<(unique_user())/binary, "@", Domain/binary>>,
    Jid = <<Bare/binary, "/r">>,
    event(How, HT, fun() -> hook_driver:presence(HT, Jid, online) end,
          mod_event_pusher_sns, #user_status_event{jid = jid:from_binary(Jid), status = online}),
    #{queue_url := Queue} = maps:get(<<"user_presence_updated">>, ?config(topics, Config)),
    %% Through the hooks, other backends' presence checks published here too.
    ?assertEqual([#{<<"user_id">> => Bare, <<"present">> => true}],
                 receive_sns_about(Config, Queue, Bare, 10));
deliver_and_check(push, How, none, _Config, {HT, Domain}) ->
    ejabberd_sm:reset(),
    ejabberd_local:reset(),
    push_client:service(?PUBSUB, result),
    Bob = <<(unique_user())/binary, "@", Domain/binary, "/pc">>,
    Alice = <<"alice@", Domain/binary, "/a">>,
    ok = push_client:register_offline(HT, Bob, ?PUBSUB, <<"node">>, []),
    event(How, HT, fun() -> push_client:route_message(HT, <<"chat">>, Alice, Bob, <<"hi">>) end,
          mod_event_pusher_push, chat_event(out, Alice, Bob, <<"hi">>)),
    [Publish] = push_client:wait_publishes(HT, 1),
    ?assertEqual(?PUBSUB, exml_query:attr(Publish, <<"to">>)),
    ?assertEqual(Domain, exml_query:attr(Publish, <<"from">>)),
    ?assertEqual(<<"node">>, exml_query:path(Publish, [{element, <<"pubsub">>},
                                                      {element, <<"publish">>},
                                                      {attr, <<"node">>}])).

%% The messages about UserId in the queue, once at least one came (up to Tries reads).
receive_sns_about(_Config, _Queue, UserId, 0) ->
    ct:fail({no_sns_message_about, UserId});
receive_sns_about(Config, Queue, UserId, Tries) ->
    Decoded = [D || #{<<"decoded_message">> := D}
                        <- sns_emulator:receive_messages(?config(emulator, Config), Queue, 1,
                                                         20000)],
    case [D || D = #{<<"user_id">> := Id} <- Decoded, Id =:= UserId] of
        [] -> receive_sns_about(Config, Queue, UserId, Tries - 1);
        About -> About
    end.

event(through_mod_event_pusher, _HT, RunHooks, _Module, _Event) ->
    RunHooks();
event(_AloneOrRunTime, HT, _RunHooks, Module, Event) ->
    Module:push_event(acc_for(HT, Event), Event),
    ok.

%%% Servers

%% The http listener is per case; RabbitMQ, moto and the pubsub service are shared.
start_server(http, _Config) -> test_http_listener:start();
start_server(_Backend, _Config) -> none.

stop_server(http, Listener) -> test_http_listener:stop(Listener);
stop_server(_Backend, none) -> ok.

pools(http, Listener) -> http_pools(Listener);
pools(rabbit, none) -> [rabbit_pool()];
pools(_Backend, none) -> [].


%% MongooseIM's http pool (outgoing_pools.expected.terms), pointed at the listener.
http_pools(Listener) ->
    [#{type => http, scope => global, tag => http_pool,
       opts => #{workers => 50, strategy => best_worker, call_timeout => 5000},
       conn_opts => #{host => "http://127.0.0.1:" ++ integer_to_list(
                                                     test_http_listener:port(Listener)),
                      path_prefix => <<"/">>, request_timeout => 2000}}].

%% MongooseIM's rabbit pool exactly as its parser gives it for outgoing_pools.toml
%% (scope host_type, localhost:5672, guest, confirms on).
rabbit_pool() ->
    {ok, Expected} = file:consult(mim_file("outgoing_pools.expected.terms")),
    {outgoing_pools, Pools} = lists:keyfind(outgoing_pools, 1, Expected),
    [Pool] = [P || P = #{type := rabbit} <- Pools],
    Pool.

global_pool(Overrides) ->
    [maps:merge(rabbit_pool(), maps:merge(#{scope => global}, Overrides))].

boot_rabbit(Pools, Extra) ->
    ok = mongoose_host:start(base_opts(Pools)
                             ++ [{{modules, ?HT},
                                  #{mod_event_pusher_rabbit => maps:merge(mim_opts(rabbit),
                                                                          Extra)}}]).

%% A presence published with confirms; the pool's metrics show it under Labels.
publish_and_check(Labels) ->
    User = unique_user(),
    Probe = amqp_probe:start([{<<"presence">>, <<User/binary, "@localhost">>}]),
    try
        hook_driver_presence_direct(User),
        {ok, [#{routing_key := Key}]} = amqp_probe:wait_for_messages(Probe, 1, 10000),
        ?assertEqual(<<User/binary, "@localhost">>, Key),
        test_wait:until(fun() -> mongoose_instrument:get_events(wpool_rabbit_messages_published,
                                                                Labels) =/= [] end,
                        fun() -> mod_event_pusher_rabbit:stats(?HT) end),
        ?assertMatch([#{count := 1} | _],
                     mongoose_instrument:get_events(wpool_rabbit_messages_published, Labels))
    after
        amqp_probe:stop(Probe)
    end.

hook_driver_presence_direct(User) ->
    Jid = <<User/binary, "@localhost/r">>,
    Event = #user_status_event{jid = jid:from_binary(Jid), status = online},
    mod_event_pusher_rabbit:push_event(acc_for(?HT, Event), Event).

%%% Options

base_opts(Pools) ->
    [{hosts, [?HT]}, {host_types, []}, {default_server_domain, ?HT}, {outgoing_pools, Pools}].

%% The options MongooseIM 6.4's parser gives mod_event_pusher_<Backend> for its own
%% modules.toml.
mim_opts(Backend) ->
    {ok, Expected} = file:consult(mim_file("modules.expected.terms")),
    {_, Modules} = lists:keyfind({modules, ?HT}, 1, Expected),
    maps:get(backend_module(Backend), Modules).

%% mim_opts/1 with the server addresses made local; the keys stay MongooseIM's.
local_opts(sns, Config) ->
    #{endpoint := Endpoint} = ?config(emulator, Config),
    (mim_opts(sns))#{sns_host := unicode:characters_to_list(Endpoint)};
local_opts(Backend, _Config) ->
    mim_opts(Backend).

backends_of(Modules) ->
    maps:from_list([{B, maps:get(backend_module(B), Modules)} || B <- ?BACKENDS]).

backend_module(Backend) ->
    list_to_atom("mod_event_pusher_" ++ atom_to_list(Backend)).

mim_file(Name) ->
    {ok, Root} = repo_binary:root(),
    filename:join([Root, "test", "mim-6.4", Name]).

%%% Events

unique_user() ->
    <<"mimdropin", (integer_to_binary(erlang:unique_integer([positive])))/binary>>.

chat_event(Direction, From, To, Body) ->
    #chat_event{type = chat, direction = Direction, from = jid:from_binary(From),
                to = jid:from_binary(To),
                packet = hook_driver:message(From, To, <<"chat">>, hook_driver:body(Body))}.

acc_for(HT, #chat_event{from = From, to = To, packet = El}) ->
    hook_driver:acc(HT, jid:to_binary(From), jid:to_binary(To), El);
acc_for(HT, #user_status_event{jid = Jid}) ->
    Bin = jid:to_binary(Jid),
    hook_driver:acc(HT, Bin, jid:to_bare_binary(Jid),
                    hook_driver:message(Bin, jid:to_bare_binary(Jid), undefined, [])).
