%% @doc Test helper (not a MongooseIM module): what every storage backend of
%% mod_event_pusher_push must do, run through mod_event_pusher_push_backend by the
%% suites of each backend (mnesia in push_host_SUITE, rdbms in push_rdbms_SUITE).
-module(push_storage_contract).

-export([enable_get_and_disable/1, calls_are_instrumented/2]).

-include_lib("stdlib/include/assert.hrl").

%% @doc Registrations of two users, disabled by node, by service and all at once.
%% Leaves only Bob's pubsub(1)/n1.
-spec enable_get_and_disable(binary()) -> ok.
enable_get_and_disable(HT) ->
    Alice = alice(HT),
    Bob = jid:make(<<"bob">>, HT, <<>>),
    Form = #{<<"secret">> => <<"x">>},
    Services = fun(User) -> push_client:services(HT, User) end,
    ?assertEqual({ok, []}, mod_event_pusher_push_backend:get_publish_services(HT, Alice)),
    ok = mod_event_pusher_push_backend:enable(HT, Alice, pubsub(1), <<"n1">>, #{}),
    ok = mod_event_pusher_push_backend:enable(HT, Alice, pubsub(1), <<"n2">>, Form),
    ok = mod_event_pusher_push_backend:enable(HT, Alice, pubsub(2), <<"n1">>, #{}),
    ok = mod_event_pusher_push_backend:enable(HT, Bob, pubsub(1), <<"n1">>, #{}),
    ?assertEqual([{pubsub(1), <<"n1">>, #{}}, {pubsub(1), <<"n2">>, Form},
                  {pubsub(2), <<"n1">>, #{}}],
                 lists:sort(Services(Alice))),
    %% the resource does not matter
    ?assertEqual(lists:sort(Services(Alice)), lists:sort(Services(jid:to_bare(Alice)))),
    %% nothing matches: nothing goes
    ok = mod_event_pusher_push_backend:disable(HT, Alice, pubsub(1), <<"other">>),
    ok = mod_event_pusher_push_backend:disable(HT, Alice, pubsub(3), undefined),
    ?assertEqual(3, length(Services(Alice))),
    %% one node
    ok = mod_event_pusher_push_backend:disable(HT, Alice, pubsub(1), <<"n1">>),
    ?assertEqual([{pubsub(1), <<"n2">>, Form}, {pubsub(2), <<"n1">>, #{}}],
                 lists:sort(Services(Alice))),
    %% all nodes of a service
    ok = mod_event_pusher_push_backend:enable(HT, Alice, pubsub(1), <<"n3">>, #{}),
    ok = mod_event_pusher_push_backend:disable(HT, Alice, pubsub(1), undefined),
    ?assertEqual([{pubsub(2), <<"n1">>, #{}}], Services(Alice)),
    %% all of the user
    ok = mod_event_pusher_push_backend:enable(HT, Alice, pubsub(3), <<"n1">>, #{}),
    ok = mod_event_pusher_push_backend:disable(HT, Alice),
    ?assertEqual([], Services(Alice)),
    ?assertEqual([{pubsub(1), <<"n1">>, #{}}], Services(Bob)),
    ok = mod_event_pusher_push_backend:disable(HT, Alice).

%% @doc enable, disable/2 and get_publish_services are instrumented under the backend
%% module's name, once per call, with their arguments (disable/4 inside enable is a
%% direct call, not counted).
-spec calls_are_instrumented(binary(), module()) -> ok.
calls_are_instrumented(HT, Backend) ->
    mongoose_instrument:clear_events(),
    Alice = alice(HT),
    [?assert(mongoose_instrument:is_set_up(Backend, #{function => F, host_type => HT}))
     || F <- [enable, disable, get_publish_services]],
    ok = mod_event_pusher_push_backend:enable(HT, Alice, pubsub(1), <<"n">>, #{}),
    {ok, _} = mod_event_pusher_push_backend:get_publish_services(HT, Alice),
    ok = mod_event_pusher_push_backend:disable(HT, Alice),
    [#{count := 1, time := Time, args := Args}] =
        mongoose_instrument:get_events(Backend, #{function => enable, host_type => HT}),
    ?assert(is_integer(Time) andalso Time >= 0),
    ?assertEqual([HT, Alice, pubsub(1), <<"n">>, #{}], Args),
    [?assertMatch([#{count := 1, args := [HT, Alice]}],
                  mongoose_instrument:get_events(Backend, #{function => F, host_type => HT}))
     || F <- [get_publish_services, disable]],
    ok.

alice(HT) ->
    jid:make(<<"alice">>, HT, <<"phone">>).

pubsub(N) ->
    jid:from_binary(<<"pubsub", (integer_to_binary(N))/binary, ".remote.example">>).
