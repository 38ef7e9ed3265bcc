%% Stand-in for mongoose_jid 2.x (OTP application `jid`).
%%
%% The real library prepares JID parts with stringprep (a NIF). Here the
%% preparation is an approximation that is good enough for tests: lowercasing
%% of the user and server parts (Unicode-aware), rejection of the characters and
%% whitespace that nodeprep forbids, rejection of control characters, invalid
%% UTF-8 and over-long parts. Resources keep their case, as with resourceprep.
-module(jid).

-include("jid.hrl").

-export([make/3, make_noprep/3, make_bare/2,
         from_binary/1,
         to_binary/1, to_bare_binary/1,
         to_lower/1, to_bare/1, to_lus/1,
         nameprep/1, nodeprep/1, resourceprep/1,
         replace_resource/2]).

-export_type([jid/0, ljid/0, simple_jid/0, simple_bare_jid/0, literal_jid/0,
              user/0, server/0, resource/0, luser/0, lserver/0, lresource/0]).

-type user() :: binary().
-type server() :: binary().
-type resource() :: binary().
-type luser() :: binary().
-type lserver() :: binary().
-type lresource() :: binary().
-type jid() :: #jid{}.
-type ljid() :: {luser(), lserver(), lresource()}.
-type simple_jid() :: {user(), server(), resource()}.
-type simple_bare_jid() :: {luser(), lserver()}.
-type literal_jid() :: binary().

%% A part of this many bytes or more is rejected (as mongoose_jid does).
-define(MAX_PART_SIZE, 1024).
%% A textual JID of this many bytes or more is rejected.
-define(MAX_JID_SIZE, 3071).
%% Characters nodeprep forbids in the user part (RFC 6122, appendix A.5).
-define(NODE_FORBIDDEN, "\"&'/:<>@").

-spec make(user(), server(), resource()) -> jid() | error.
make(User, Server, Resource) ->
    case {nodeprep(User), nameprep(Server), resourceprep(Resource)} of
        {error, _, _} -> error;
        {_, error, _} -> error;
        {_, _, error} -> error;
        {LUser, LServer, LResource} ->
            #jid{luser = LUser, lserver = LServer, lresource = LResource}
    end.

%% @doc Builds a JID from parts that are already prepared, without checks.
-spec make_noprep(luser(), lserver(), lresource()) -> jid().
make_noprep(LUser, LServer, LResource) ->
    #jid{luser = LUser, lserver = LServer, lresource = LResource}.

-spec make_bare(user(), server()) -> jid() | error.
make_bare(User, Server) ->
    make(User, Server, <<>>).

%% @doc Parses `[user@]server[/resource]'. Everything after the first "/" is
%% the resource (it may contain "@" and "/"); the part before it may hold at
%% most one "@", which must not be its first character.
-spec from_binary(binary()) -> jid() | error.
from_binary(Bin) when is_binary(Bin), byte_size(Bin) < ?MAX_JID_SIZE ->
    {BareJid, Resource} = case binary:split(Bin, <<"/">>) of
                              [NoResource] -> {NoResource, <<>>};
                              [BeforeSlash, AfterSlash] -> {BeforeSlash, AfterSlash}
                          end,
    case binary:split(BareJid, <<"@">>, [global]) of
        [Server] -> make(<<>>, Server, Resource);
        [<<>>, _Server] -> error;
        [User, Server] -> make(User, Server, Resource);
        _TwoOrMoreAts -> error
    end;
from_binary(_) ->
    error.

%% @doc "user@server/resource", leaving out the empty parts and their separators.
-spec to_binary(jid() | ljid() | simple_bare_jid() | literal_jid()) -> binary().
to_binary(#jid{luser = User, lserver = Server, lresource = Resource}) ->
    join(User, Server, Resource);
to_binary({User, Server, Resource}) ->
    join(User, Server, Resource);
to_binary({User, Server}) ->
    join(User, Server, <<>>);
to_binary(Bin) when is_binary(Bin) ->
    Bin.

-spec to_bare_binary(jid() | ljid() | simple_bare_jid()) -> binary().
to_bare_binary(#jid{luser = User, lserver = Server}) ->
    join(User, Server, <<>>);
to_bare_binary({User, Server, _Resource}) ->
    join(User, Server, <<>>);
to_bare_binary({User, Server}) ->
    join(User, Server, <<>>).

%% @doc The prepared parts as a tuple. A tuple given as input is prepared
%% again, which may fail.
-spec to_lower(jid() | simple_jid()) -> ljid() | error.
to_lower(#jid{luser = LUser, lserver = LServer, lresource = LResource}) ->
    {LUser, LServer, LResource};
to_lower({User, Server, Resource}) ->
    case make(User, Server, Resource) of
        error -> error;
        Jid -> to_lower(Jid)
    end.

-spec to_bare(jid()) -> jid();
             (ljid()) -> ljid();
             (error) -> error.
to_bare(#jid{} = Jid) ->
    Jid#jid{lresource = <<>>};
to_bare({User, Server, _Resource}) ->
    {User, Server, <<>>};
to_bare(error) ->
    error.

-spec to_lus(jid()) -> simple_bare_jid().
to_lus(#jid{luser = LUser, lserver = LServer}) ->
    {LUser, LServer}.

-spec replace_resource(jid(), resource()) -> jid() | error.
replace_resource(#jid{} = Jid, Resource) ->
    case resourceprep(Resource) of
        error -> error;
        LResource -> Jid#jid{lresource = LResource}
    end.

%% @doc Prepares a user part: lowercased; error for forbidden characters,
%% whitespace, control characters, invalid UTF-8 or too many bytes.
-spec nodeprep(user()) -> luser() | error.
nodeprep(User) ->
    prepare(User, fun string:lowercase/1,
            fun(C) -> lists:member(C, ?NODE_FORBIDDEN) orelse is_space(C) end).

%% @doc Prepares a server part: lowercased; error when empty, or for
%% whitespace, "@", "/", control characters, invalid UTF-8 or too many bytes.
-spec nameprep(server()) -> lserver() | error.
nameprep(<<>>) ->
    error;
nameprep(Server) ->
    prepare(Server, fun string:lowercase/1,
            fun(C) -> C =:= $@ orelse C =:= $/ orelse is_space(C) end).

%% @doc Prepares a resource: case is kept and ASCII spaces are allowed;
%% error for other whitespace, control characters, invalid UTF-8 or too many bytes.
-spec resourceprep(resource()) -> lresource() | error.
resourceprep(Resource) ->
    prepare(Resource, fun(Chars) -> Chars end,
            fun(C) -> C =/= $\s andalso is_space(C) end).

-spec prepare(binary(), Map, IsForbidden) -> binary() | error when
      Map :: fun((unicode:chardata()) -> unicode:chardata()),
      IsForbidden :: fun((char()) -> boolean()).
prepare(Part, Map, IsForbidden) when is_binary(Part), byte_size(Part) < ?MAX_PART_SIZE ->
    case unicode:characters_to_list(Part) of
        Chars when is_list(Chars) ->
            case lists:any(fun(C) -> is_control(C) orelse IsForbidden(C) end, Chars) of
                true -> error;
                false -> unicode:characters_to_binary(Map(Chars))
            end;
        _InvalidUtf8 ->
            error
    end;
prepare(_Part, _Map, _IsForbidden) ->
    error.

-spec is_control(char()) -> boolean().
is_control(C) ->
    C < 16#20 orelse (C >= 16#7F andalso C =< 16#9F).

%% ASCII and Unicode space characters (stringprep tables C.1.1 and C.1.2).
-spec is_space(char()) -> boolean().
is_space(C) ->
    C =:= $\s orelse C =:= 16#A0 orelse C =:= 16#1680
        orelse (C >= 16#2000 andalso C =< 16#200B)
        orelse C =:= 16#2028 orelse C =:= 16#2029 orelse C =:= 16#202F
        orelse C =:= 16#205F orelse C =:= 16#3000.

-spec join(binary(), binary(), binary()) -> binary().
join(User, Server, Resource) ->
    WithUser = case User of
                   <<>> -> Server;
                   _ -> <<User/binary, $@, Server/binary>>
               end,
    case Resource of
        <<>> -> WithUser;
        _ -> <<WithUser/binary, $/, Resource/binary>>
    end.
