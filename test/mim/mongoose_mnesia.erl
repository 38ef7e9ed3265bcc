%% Stand-in for MongooseIM's mongoose_mnesia: creating a module's mnesia
%% table when the module starts.
-module(mongoose_mnesia).

-include_lib("kernel/include/logger.hrl").

-export([create_table/2]).

%% How long to wait for an existing table to be loaded (MongooseIM waits for
%% its tables while it boots, before modules start).
-define(WAIT_FOR_TABLE_MS, 10000).

%% @doc mnesia:create_table/2, tolerating a table that already exists: then
%% this node gets a copy of the storage types named in Opts that it lacks,
%% and the table is waited for. Any other failure (e.g. mnesia not running)
%% raises.
-spec create_table(atom(), list()) -> {atomic, ok} | {aborted, {already_exists, atom()}}.
create_table(Table, Opts) ->
    case mnesia:create_table(Table, Opts) of
        {atomic, ok} = Result ->
            Result;
        {aborted, {already_exists, Table}} = Result ->
            add_local_copies(Table, Opts),
            ok = mnesia:wait_for_tables([Table], ?WAIT_FOR_TABLE_MS),
            Result;
        Other ->
            ?LOG_ERROR(#{what => mnesia_create_table_failed, table => Table, opts => Opts,
                         reason => Other}),
            error(#{what => mnesia_create_table_failed, table => Table, reason => Other})
    end.

-spec add_local_copies(atom(), list()) -> ok.
add_local_copies(Table, Opts) ->
    Node = node(),
    lists:foreach(
      fun(Type) ->
              Nodes = proplists:get_value(Type, Opts, []),
              case lists:member(Node, Nodes) andalso
                  not lists:member(Node, mnesia:table_info(Table, Type)) of
                  true -> add_local_copy(Table, Node, Type);
                  false -> ok
              end
      end, [ram_copies, disc_copies, disc_only_copies]).

-spec add_local_copy(atom(), node(), ram_copies | disc_copies | disc_only_copies) -> ok.
add_local_copy(Table, Node, Type) ->
    case mnesia:add_table_copy(Table, Node, Type) of
        {atomic, ok} -> ok;
        {aborted, {already_exists, Table, Node}} -> ok;
        Other -> error(#{what => mnesia_add_table_copy_failed, table => Table,
                         type => Type, reason => Other})
    end.
