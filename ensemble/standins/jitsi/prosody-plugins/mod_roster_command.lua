-- TEST STAND-IN (ensemble) for Jitsi's mod_roster_command; not Jitsi's software.
-- `prosodyctl mod_roster_command subscribe focus.D focus@auth.D` is what the real packages run so
-- client_proxy can reach jicofo; the stand-in client_proxy needs no roster, so this only accepts it.

function module.command(arg)
	local command = arg[1];
	if command ~= "subscribe" and command ~= "unsubscribe" and command ~= "subscribe_both"
		and command ~= "unsubscribe_both" and command ~= "remove" then
		print("usage: prosodyctl mod_roster_command subscribe|unsubscribe|subscribe_both|remove USER CONTACT");
		return 1;
	end
	print("TEST STAND-IN mod_roster_command: " .. command .. " " .. tostring(arg[2]) .. " " .. tostring(arg[3])
		.. " accepted (no roster change needed)");
	return 0;
end
