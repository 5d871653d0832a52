-- TEST STAND-IN (ensemble) for Jitsi's mod_conference_duration; not Jitsi's software. Like upstream's,
-- loaded on the VirtualHost with main_muc set: once a room of main_muc has more than one occupant, its
-- created_timestamp becomes the current time as a STRING of milliseconds (read by mod_muc_census and
-- announced in the room's disco#info as muc#roominfo_created_timestamp).

local main_muc = module:get_option_string("main_muc");
if main_muc == nil then
	module:log("error", "TEST STAND-IN conference_duration: no main_muc configured");
	return;
end

local function occupant_joined(event)
	local room, count = event.room, 0;
	for _ in room:each_occupant() do count = count + 1; end
	if count > 1 and room.created_timestamp == nil then
		room.created_timestamp = string.format("%i", os.time() * 1000);
	end
end

local function disco_info(event)
	table.insert(event.form, { name = "muc#roominfo_created_timestamp"; type = "text-single";
		label = "The meeting created_timestamp."; value = event.room.created_timestamp or "" });
end

local hooked = false;
local function hook_main_muc()
	local host = prosody.hosts[main_muc];
	if hooked or not host then return; end
	hooked = true;
	host.events.add_handler("muc-occupant-joined", occupant_joined, -1);
	host.events.add_handler("muc-disco#info", disco_info);
end

-- the MUC component is usually defined after the VirtualHost: wait for it when it is not there yet
hook_main_muc();
module:hook_global("host-activated", function(host)
	if host == main_muc then hook_main_muc(); end
end);

module:log("info", "TEST STAND-IN conference_duration for %s", main_muc);
