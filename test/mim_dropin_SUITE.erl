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

all() ->
    [stand_in_refuses_a_duplicate_event_as_mongooseim_does,
     rabbit_global_pool_metrics_carry_the_global_label,
     rabbit_host_type_pool_boots_and_metrics_carry_the_host_type,
     rabbit_connection_in_the_module_section_needs_no_pool,
     rabbit_without_a_connection_fails_the_boot_as_a_whole,
     every_backend_boots_beside_every_pool_type,
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
    ok = test_wait:bounded(fun mongoose_host:stop/0, 20000),
    %% The push backend creates the table when it first starts.
    case lists:member(push_subscription, mnesia:system_info(tables)) of
        true -> {atomic, ok} = mnesia:clear_table(push_subscription), ok;
        false -> ok
    end.

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
%% backend's push_event/2, as another module of MongooseIM's would call it.
deliver_and_check(http, How, Listener, _Config) ->
    User = unique_user(),
    event(How, fun() -> hook_driver:send(?HT, <<"chat">>, <<User/binary, "@localhost/r">>,
                                         <<"bob@localhost">>, <<"hello">>) end,
          mod_event_pusher_http, chat_event(in, <<User/binary, "@localhost/r">>,
                                            <<"bob@localhost">>, <<"hello">>)),
    {ok, [#{path := Path, body := Body}]} = test_http_listener:wait_for_requests(Listener, 1,
                                                                                 10000),
    ?assertEqual(<<"/notifications">>, Path),
    ?assertEqual([{<<"author">>, User}, {<<"server">>, ?HT}, {<<"receiver">>, <<"bob">>},
                  {<<"message">>, <<"hello">>}],
                 uri_string:dissect_query(Body));
deliver_and_check(rabbit, How, none, _Config) ->
    User = unique_user(),
    Jid = <<User/binary, "@localhost/r">>,
    %% MongooseIM's default exchange names are shared: bound to this user's key only.
    Probe = amqp_probe:start([{<<"presence">>, <<User/binary, "@localhost">>}]),
    try
        event(How, fun() -> hook_driver:presence(?HT, Jid, online) end,
              mod_event_pusher_rabbit, #user_status_event{jid = jid:from_binary(Jid),
                                                          status = online}),
        {ok, [#{exchange := <<"presence">>, payload := Payload}]} =
            amqp_probe:wait_for_messages(Probe, 1, 10000),
        ?assertEqual(#{<<"user_id">> => Jid, <<"present">> => true},
                     jiffy:decode(Payload, [return_maps]))
    after
        amqp_probe:stop(Probe)
    end;
deliver_and_check(sns, How, none, Config) ->
    User = unique_user(),
    Jid = <<User/binary, "@localhost/r">>,
    event(How, fun() -> hook_driver:presence(?HT, Jid, online) end,
          mod_event_pusher_sns, #user_status_event{jid = jid:from_binary(Jid), status = online}),
    #{queue_url := Queue} = maps:get(<<"user_presence_updated">>, ?config(topics, Config)),
    ?assertEqual([#{<<"user_id">> => <<User/binary, "@localhost">>, <<"present">> => true}],
                 [Decoded || #{<<"decoded_message">> := Decoded}
                                 <- sns_emulator:receive_messages(?config(emulator, Config),
                                                                  Queue, 1, 20000)]);
deliver_and_check(push, How, _Service, _Config) ->
    ejabberd_sm:reset(),
    ejabberd_local:reset(),
    push_client:service(?PUBSUB, result),
    Bob = <<(unique_user())/binary, "@localhost/pc">>,
    ok = push_client:register_offline(?HT, Bob, ?PUBSUB, <<"node">>, []),
    event(How, fun() -> hook_driver:deliver(?HT, <<"chat">>, <<"alice@localhost/a">>, Bob,
                                            <<"hi">>) end,
          mod_event_pusher_push, chat_event(out, <<"alice@localhost/a">>, Bob, <<"hi">>)),
    [Publish] = push_client:wait_publishes(?HT, 1),
    ?assertEqual(?PUBSUB, exml_query:attr(Publish, <<"to">>)),
    ?assertEqual(<<"node">>, exml_query:path(Publish, [{element, <<"pubsub">>},
                                                      {element, <<"publish">>},
                                                      {attr, <<"node">>}])).

event(through_mod_event_pusher, RunHooks, _Module, _Event) ->
    RunHooks();
event(_AloneOrRunTime, _RunHooks, Module, Event) ->
    Acc = acc_for(Event),
    Module:push_event(Acc, Event),
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
    mod_event_pusher_rabbit:push_event(acc_for(Event), Event).

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
    filename:join([code:lib_dir(mongoose_event_pusher), "..", "..", "..", "..", "test",
                   "mim-6.4", Name]).

%%% Events

unique_user() ->
    <<"mimdropin", (integer_to_binary(erlang:unique_integer([positive])))/binary>>.

chat_event(Direction, From, To, Body) ->
    #chat_event{type = chat, direction = Direction, from = jid:from_binary(From),
                to = jid:from_binary(To),
                packet = hook_driver:message(From, To, <<"chat">>, hook_driver:body(Body))}.

acc_for(#chat_event{from = From, to = To, packet = El}) ->
    hook_driver:acc(?HT, jid:to_binary(From), jid:to_binary(To), El);
acc_for(#user_status_event{jid = Jid}) ->
    Bin = jid:to_binary(Jid),
    hook_driver:acc(?HT, Bin, jid:to_bare_binary(Jid),
                    hook_driver:message(Bin, jid:to_bare_binary(Jid), undefined, [])).
