-- TEST STAND-IN (ensemble) for Jitsi's mod_muc_census; not Jitsi's software. Written from the
-- documented behaviour: load it on the shard's VirtualHost (modules_enabled = { "muc_census" }) and
--   GET http://127.0.0.1:5280/room-census   (Host: <the VirtualHost>)
-- answers {"room_census":[{"room_name":"r@conference.D","participants":2,"created_time":..,"leaked":false}]}.
-- participants leaves out the focus (jicofo) and any JID in muc_census_excluded_jids.
-- created_time is in milliseconds; leaked marks a room with nobody but the focus left in it for longer
-- than muc_census_leak_seconds (a room jicofo forgot to destroy).

local json = require "util.json";
local jid_bare = require "util.jid".bare;
local jid_host = require "util.jid".host;
local jid_resource = require "util.jid".resource;

module:depends("http");

local base = module:get_option_string("muc_mapper_domain_base", module.host);
local muc_domain = module:get_option_string("main_muc",
	module:get_option_string("muc_mapper_domain_prefix", "conference") .. "." .. base);
local excluded = module:get_option_set("muc_census_excluded_jids", { "focus@auth." .. base });
local leak_seconds = module:get_option_number("muc_census_leak_seconds", 60);

-- When each room was first seen (rooms carry no creation time of their own in prosody 0.12).
local first_seen = setmetatable({}, { __mode = "k" });

local function is_counted(occupant)
	if excluded:contains(occupant.bare_jid) then return false; end
	-- jicofo joins as nick "focus" from the auth domain even when its JID is not listed
	return not (jid_resource(occupant.nick) == "focus" and jid_host(occupant.bare_jid) == "auth." .. base);
end

local function census_of(room, now)
	local participants, others = 0, 0;
	for _, occupant in room:each_occupant() do
		if is_counted(occupant) then participants = participants + 1; else others = others + 1; end
	end
	local created = room.created_timestamp or first_seen[room];
	if not created then
		created = now * 1000;
		first_seen[room] = created;
	end
	local age = now - created / 1000;
	return {
		room_name = jid_bare(room.jid);
		participants = participants;
		created_time = math.floor(created);
		leaked = participants == 0 and others > 0 and age > leak_seconds;
	};
end

local function handle_census(event)
	local host = prosody.hosts[muc_domain];
	local muc = host and host.modules.muc;
	if not muc then
		module:log("warn", "room census: no MUC component at %s", muc_domain);
		return 404;
	end
	local now, rooms = os.time(), {};
	local each = muc.live_rooms or muc.each_room;
	for room in each() do
		rooms[#rooms + 1] = census_of(room, now);
	end
	event.response.headers.content_type = "application/json";
	if #rooms == 0 then return [[{"room_census":[]}]]; end  -- util.json writes {} for an empty table
	return json.encode({ room_census = rooms });
end

module:provides("http", {
	default_path = "/";
	route = { ["GET room-census"] = handle_census };
});

module:log("info", "TEST STAND-IN room census for %s on /room-census", muc_domain);
