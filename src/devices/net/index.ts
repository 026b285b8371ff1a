/**
 * virtio-net over vhost-user: a MAC-learning switch whose ports are virtio-net devices, plus a TAP uplink.
 */
export { NetSwitch, type NetSwitchOptions, type SwitchPort, type MacTableEntry, type SwitchCounters } from './switch.js';
export { NetPort, type NetPortOptions, NET_CONFIG_SIZE, NET_S_LINK_UP } from './port.js';
export { TapUplink, openTap, tapSupported, type TapHandle, type TapUplinkOptions } from './tap.js';
export { Network, DEFAULT_NET_POLL_US, type NetworkOptions, type NetworkPortSpec } from './network.js';
export { Packet } from './packet.js';
export { PortStats, formatStats, COUNTER_NAMES, type PortCounters } from './stats.js';
export { RxFilter, MAC_TABLE_ENTRIES } from './rx-filter.js';
export { CtrlAck, CtrlClass, CtrlMac, CtrlMq, CtrlRx } from './ctrl.js';
export { NetHdrFlag, NetHdrGso, NET_HDR_SIZE, LEGACY_NET_HDR_SIZE, MAX_FRAME } from './header.js';
export { completeChecksum } from './checksum.js';
export { parseMac, formatMac, generateMac } from './mac.js';
