-- TEST STAND-IN (ensemble) for Jitsi's mod_muc_census; not Jitsi's software. Written from upstream's
-- observable behaviour: load it on the shard's VirtualHost (modules_enabled = { "muc_census" }) and
--   GET http://127.0.0.1:5280/room-census   (Host: <the VirtualHost>)
-- answers, with no Content-Type header,
--   {"room_census":[{"room_name":"r@conference.D","participants":2,"created_time":"1767225600000","leaked":false}]}
-- - the MUC read is <muc_mapper_domain_prefix (default "conference")>.<the VirtualHost>; 400 when absent;
-- - room_name is the room's JID as joined (the node jitsi-meet derived, %-encoded accents included);
-- - participants is the number of occupants minus one for the focus, subtracted whether or not the
--   focus is (still) there;
-- - created_time is the room's created_timestamp, a STRING of milliseconds that mod_conference_duration
--   sets once a second occupant joins: absent until then (and absent without that module);
-- - leaked is true when participants > 0 and that many occupants have no live session;
-- - jicofo's health-check rooms (__jicofo-health-check*) are left out; the brewery lives on another
--   component (internal.auth.D) and is never read;
-- - an empty census is {"room_census":[]} (cjson writes an empty table as {}, so the list is literal).
-- Needs lua-cjson (cjson.safe), as upstream's does.

local json = require "cjson.safe";

module:depends("http");

local muc_domain_prefix = module:get_option_string("muc_mapper_domain_prefix", "conference");
local health_prefix = "__jicofo-health-check";

local function census_entry(room)
	local count, missing = 0, 0;
	if room._occupants then
		for _, occupant in room:each_occupant() do
			count = count + 1;
			if prosody.full_sessions[occupant.jid] == nil then missing = missing + 1; end
		end
		count = count - 1; -- the focus
	end
	return {
		room_name = room.jid;
		participants = count;
		created_time = room.created_timestamp; -- nil: the key is left out
		leaked = count > 0 and missing == count;
	};
end

local function handle_census()
	local host = prosody.hosts[muc_domain_prefix .. "." .. module.host];
	if not host or not host.modules.muc then
		return { status_code = 400 };
	end
	local rooms = {};
	for room in host.modules.muc.each_room() do
		if room.jid:sub(1, #health_prefix) ~= health_prefix then
			rooms[#rooms + 1] = census_entry(room);
		end
	end
	local list = #rooms == 0 and "[]" or json.encode(rooms);
	return { status_code = 200; body = '{"room_census":' .. list .. '}' };
end

module:provides("http", {
	default_path = "/";
	route = { ["GET room-census"] = handle_census };
});

module:log("info", "TEST STAND-IN room census for %s.%s on /room-census", muc_domain_prefix, module.host);
