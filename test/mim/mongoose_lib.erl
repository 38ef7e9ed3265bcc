%% Stand-in for MongooseIM's mongoose_lib: only the helper the event pusher uses.
-module(mongoose_lib).

-include_lib("kernel/include/logger.hrl").

-export([log_if_backend_error/4]).

%% @doc Logs an error unless Result is a success of some storage backend:
%% `ok', `{ok, _}', `{atomic, _}' (mnesia) or `{updated, _}' (RDBMS). The reports
%% are MongooseIM 6.4's: `{error, E}' gives reason E, anything else is the reason.
-spec log_if_backend_error(term(), module(), non_neg_integer(), term()) -> ok.
log_if_backend_error(ok, _Module, _Line, _Args) -> ok;
log_if_backend_error({ok, _}, _Module, _Line, _Args) -> ok;
log_if_backend_error({atomic, _}, _Module, _Line, _Args) -> ok;
log_if_backend_error({updated, _}, _Module, _Line, _Args) -> ok;
log_if_backend_error({error, Reason}, Module, Line, Args) ->
    ?LOG_ERROR(#{what => backend_error, text => <<"Error calling backend module">>,
                 caller_module => Module, caller_line => Line,
                 reason => Reason, args => Args}),
    ok;
log_if_backend_error(Result, Module, Line, Args) ->
    ?LOG_ERROR(#{what => backend_error, text => <<"Unexpected return from backend">>,
                 caller_module => Module, caller_line => Line,
                 reason => Result, args => Args}),
    ok.
