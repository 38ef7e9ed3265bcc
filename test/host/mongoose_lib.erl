%% Stand-in for MongooseIM's mongoose_lib: only the helper the event pusher uses.
-module(mongoose_lib).

-include_lib("kernel/include/logger.hrl").

-export([log_if_backend_error/4]).

%% @doc Logs an error unless Result is a success of some storage backend:
%% `ok', `{ok, _}', `{atomic, _}' (mnesia) or `{updated, _}' (RDBMS).
-spec log_if_backend_error(term(), module(), non_neg_integer(), term()) -> ok.
log_if_backend_error(ok, _Module, _Line, _Args) -> ok;
log_if_backend_error({ok, _}, _Module, _Line, _Args) -> ok;
log_if_backend_error({atomic, _}, _Module, _Line, _Args) -> ok;
log_if_backend_error({updated, _}, _Module, _Line, _Args) -> ok;
log_if_backend_error(Result, Module, Line, Args) ->
    ?LOG_ERROR(#{what => backend_error, text => <<"Unexpected result from a backend">>,
                 reason => Result, caller_module => Module, caller_line => Line,
                 args => Args}),
    ok.
