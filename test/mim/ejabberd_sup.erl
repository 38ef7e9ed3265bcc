%% Stand-in for MongooseIM's ejabberd_sup, the node's root supervisor: modules start
%% their processes under it with start_child/1 and remove them with stop_child/1.
%% Same names, arities and results as MongooseIM 6.4: start_child answers {ok, Pid} or
%% logs and raises {start_child_failed, Result, ChildSpec}; stop_child always answers
%% ok. It supervises nothing else here (the stand-in's services start on their own).
-module(ejabberd_sup).
-behaviour(supervisor).

-include_lib("kernel/include/logger.hrl").

%% Service
-export([start_link/0, start/0, stop/0]).
%% API
-export([start_child/1, start_child/2, stop_child/1]).
%% supervisor
-export([init/1]).

-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, noargs).

%% @doc Starts the supervisor without a link (tests start it from short-lived
%% processes, and a supervisor ends with its parent).
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    case start_link() of
        {ok, Pid} ->
            unlink(Pid),
            {ok, Pid};
        ignore ->
            {error, ignore};
        {error, _} = Error ->
            Error
    end.

%% @doc Stops the supervisor and, first, every child it still has.
-spec stop() -> ok.
stop() ->
    gen_server:stop(?MODULE).

-spec start_child(supervisor:child_spec()) -> {ok, pid()}.
start_child(ChildSpec) ->
    start_child(?MODULE, ChildSpec).

-spec start_child(atom() | pid(), supervisor:child_spec()) -> {ok, pid()}.
start_child(SupName, ChildSpec) ->
    case supervisor:start_child(SupName, ChildSpec) of
        {ok, Pid} ->
            {ok, Pid};
        Other ->
            ?LOG_ERROR(#{what => start_child_failed, spec => ChildSpec,
                         supervisor_name => SupName, reason => Other}),
            erlang:error({start_child_failed, Other, ChildSpec})
    end.

-spec stop_child(term()) -> ok.
stop_child(Proc) ->
    _ = supervisor:terminate_child(?MODULE, Proc),
    _ = supervisor:delete_child(?MODULE, Proc),
    ok.

-spec init(noargs) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(noargs) ->
    {ok, {{one_for_one, 10, 1}, []}}.
