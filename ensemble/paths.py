"""Where ensemble puts things on its hosts, and the loopback ports it reads: one place for all of them.

Plain constants, no imports: render, components, the front door's on-host code (Debian's python3)
and the lifecycle commands all read these, so a path or port is changed here and only here.

Example::

    from ensemble import paths
    paths.SECRETS_FILE            # "/etc/ensemble/secrets.json" (0600, root)
    paths.PROSODY_HTTP_PORT       # 5280 (the room census, loopback only)
"""

# ---- every host ----
SECRETS_FILE = "/etc/ensemble/secrets.json"  # the host's own secrets + the fleet entry, 0600
FLEET_ID_FILE = "/etc/ensemble/fleet-id"  # the fleet's identity (name, domain, id)
DEBCONF_PRESEED = "/etc/ensemble/debconf.preseed"
NFTABLES_CONF = "/etc/nftables.conf"
NFTABLES_CANDIDATE = "/etc/ensemble/nftables.conf.new"  # checked with `nft -c` before it replaces the live one
SYSCTL_FILE = "/etc/sysctl.d/20-jvb-udp-buffers.conf"
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
APT_DIRECT_FILE = "/etc/apt/apt.conf.d/02ensemble-direct"
JITSI_KEYRING = "/usr/share/keyrings/jitsi-keyring.gpg"
JITSI_SOURCE = "/etc/apt/sources.list.d/jitsi.sources"
JITSI_PREFERENCES = "/etc/apt/preferences.d/ensemble-jitsi.pref"  # pinned Jitsi versions (legacy profiles)

# ---- TLS ----
TLS_DIR = "/etc/ensemble/tls"  # <domain>/fullchain.pem and privkey.pem
ACME_WEBROOT = "/var/www/acme"
ACME_CA = "/usr/local/share/ca-certificates/ensemble-acme-ca.crt"
CERTBOT_HOOK = "/etc/letsencrypt/renewal-hooks/deploy/ensemble-reload-nginx"
FLEET_CA_CERT = "/etc/ensemble/fleet-ca.pem"  # the fleet CA's certificate (front door: verifies the shards)
OCCUPANCY_TLS_CERT = "/etc/ensemble/tls/occupancy/fullchain.pem"  # shard: issued by the fleet CA
OCCUPANCY_TLS_KEY = "/etc/ensemble/tls/occupancy/privkey.pem"  # 0600

# ---- shards ----
STATE_FILE = "/var/lib/ensemble/state.json"  # {"drain": bool}, served to the front door by nginx
PROSODY_CERT_DIR = "/etc/prosody/certs"
ETHERPAD_HOME = "/opt/etherpad"
ETHERPAD_CONF_DIR = "/etc/etherpad"
ETHERPAD_STATE_DIR = "/var/lib/etherpad"
PROSODY_HTTP_PORT = 5280  # prosody's HTTP (census, BOSH, websocket) on loopback
JVB_PRIVATE_PORT = 8080  # jitsi-videobridge's private REST (colibri stats, drain) on loopback
JICOFO_REST_PORT = 8888  # jicofo's REST (health, conference requests) on loopback
OCCUPANCY_PORT = 7443  # the shard's private occupancy listener (fleet-CA TLS), open to the front door only
JVB_MEDIA_PORT = 10000  # jitsi-videobridge's UDP media port, public on shards only

# ---- TURN relay (coturn) on shards ----
COTURN_CONF = "/etc/turnserver.conf"  # Debian's coturn reads it (0640 root:turnserver: holds the secret)
COTURN_START_GUARD = "/etc/systemd/system/coturn.service.d/10-ensemble.conf"  # put before the package install
COTURN_CERT_DIR = "/etc/coturn/certs"  # copies of the shard's certificate coturn (user turnserver) can read
NGINX_STREAM_CONF = "/etc/nginx/modules-enabled/60-ensemble-turn.conf"  # main-context include: the 443 multiplexer
TURN_TLS_PUBLIC_PORT = 443  # TURN over TLS shares the web site's port: locked-down networks reach only 443
WEB_TLS_PORT = 4444  # the web site's TLS listener on loopback, behind the multiplexer (PROXY protocol)
TURN_TLS_STRIP_PORT = 4445  # loopback hop that drops the PROXY header before coturn's TLS listener
COTURN_TLS_PORT = 5349  # coturn's own TLS listener (not opened in the firewall: reached through 443)

# ---- front door ----
ENSEMBLE_HOME = "/usr/local/lib/ensemble"  # ensemble's own code, run by the refresh timer
ENSEMBLE_BIN = "/usr/local/bin/ensemble"
FRONTDOOR_SPEC = "/etc/ensemble/ensemble.json"  # JSON: bullseye's python 3.9 has no tomllib
FRONTDOOR_SPEC_TOML = "/etc/ensemble/ensemble.toml"  # where deploys before the JSON spec wrote it: removed
FRONTDOOR_STATE = "/var/lib/ensemble/frontdoor/state.json"
FRONTDOOR_METRICS = "/var/lib/ensemble/frontdoor/metrics.prom"  # Prometheus text, served at METRICS_URL_PATH
METRICS_URL_PATH = "/_ensemble/metrics"  # allow-listed: frontdoor.metrics_allowed_cidrs
FLEET_SIZE_FILE = "/var/lib/ensemble/fleet-size.json"  # {"shards": N, "spec_shards": M}: what `fleet scale` decided
ROUTING_PATH = "/var/lib/ensemble/frontdoor/routing.conf"
ROUTING_SEED = "/etc/ensemble/frontdoor/routing.seed.conf"

# ---- the ops host (`ensemble autoscale --install-unit`; never a shard or the front door) ----
OPS_UNIT_DIR = "/etc/systemd/system"  # ensemble-autoscale-<fleet>.service and .timer
OPS_AUTOSCALE_ENV = "/etc/ensemble/autoscale-{fleet}.env"  # optional, 0600: SCW_* credentials for the unit
