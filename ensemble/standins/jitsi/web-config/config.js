// TEST STAND-IN (ensemble) default config.js for Jitsi Meet; not Jitsi's software.
// The stand-in postinst copies it to /etc/jitsi/meet/<domain>-config.js when absent; ensemble's
// deploy then owns that file.
var config = {
    hosts: {
        domain: 'jitsi-meet.example.com',
        muc: 'conference.jitsi-meet.example.com'
    },
    bosh: 'https://jitsi-meet.example.com/http-bind',
    websocket: 'wss://jitsi-meet.example.com/xmpp-websocket',
    conferenceRequestUrl: 'https://jitsi-meet.example.com/conference-request/v1',
    defaultLanguage: 'en',
    p2p: { enabled: true }
};
