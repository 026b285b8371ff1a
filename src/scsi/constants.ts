/**
 * SCSI numbers the target emulation uses: operation codes, status codes, sense keys, additional sense codes,
 * VPD and mode page codes (SPC-4, SBC-3). Pure data; nothing here knows about the transport.
 */

/** Operation codes (first CDB byte). */
export const Opcode = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  READ_6: 0x08,
  WRITE_6: 0x0a,
  INQUIRY: 0x12,
  MODE_SELECT_6: 0x15,
  MODE_SENSE_6: 0x1a,
  START_STOP_UNIT: 0x1b,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  VERIFY_10: 0x2f,
  SYNCHRONIZE_CACHE_10: 0x35,
  WRITE_SAME_10: 0x41,
  UNMAP: 0x42,
  MODE_SELECT_10: 0x55,
  MODE_SENSE_10: 0x5a,
  READ_16: 0x88,
  WRITE_16: 0x8a,
  VERIFY_16: 0x8f,
  SYNCHRONIZE_CACHE_16: 0x91,
  WRITE_SAME_16: 0x93,
  SERVICE_ACTION_IN_16: 0x9e,
  REPORT_LUNS: 0xa0,
  READ_12: 0xa8,
  WRITE_12: 0xaa,
} as const;

/** Service actions of SERVICE ACTION IN(16). */
export const ServiceActionIn16 = {
  READ_CAPACITY_16: 0x10,
} as const;

/** SCSI status codes (SAM-5). */
export const ScsiStatus = {
  GOOD: 0x00,
  CHECK_CONDITION: 0x02,
  CONDITION_MET: 0x04,
  BUSY: 0x08,
  RESERVATION_CONFLICT: 0x18,
  TASK_SET_FULL: 0x28,
  ACA_ACTIVE: 0x30,
  TASK_ABORTED: 0x40,
} as const;

/** Sense keys (SPC-4, 4.5.6). */
export const SenseKey = {
  NO_SENSE: 0x0,
  RECOVERED_ERROR: 0x1,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  ABORTED_COMMAND: 0xb,
  MISCOMPARE: 0xe,
} as const;

/** A sense key with its additional sense code and qualifier. */
export interface SenseCode {
  readonly key: number;
  readonly asc: number;
  readonly ascq: number;
}

function code(key: number, asc: number, ascq: number): SenseCode {
  return Object.freeze({ key, asc, ascq });
}

/** The sense conditions the target reports. */
export const Sense = {
  NO_SENSE: code(SenseKey.NO_SENSE, 0x00, 0x00),
  /** LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED (stopped by START STOP UNIT). */
  NOT_READY_STOPPED: code(SenseKey.NOT_READY, 0x04, 0x02),
  /** UNRECOVERED READ ERROR. */
  READ_ERROR: code(SenseKey.MEDIUM_ERROR, 0x11, 0x00),
  /** WRITE ERROR. */
  WRITE_ERROR: code(SenseKey.MEDIUM_ERROR, 0x0c, 0x00),
  /** INTERNAL TARGET FAILURE (a bug of ours). */
  INTERNAL_FAILURE: code(SenseKey.HARDWARE_ERROR, 0x44, 0x00),
  PARAMETER_LIST_LENGTH_ERROR: code(SenseKey.ILLEGAL_REQUEST, 0x1a, 0x00),
  INVALID_OPCODE: code(SenseKey.ILLEGAL_REQUEST, 0x20, 0x00),
  LBA_OUT_OF_RANGE: code(SenseKey.ILLEGAL_REQUEST, 0x21, 0x00),
  INVALID_FIELD_IN_CDB: code(SenseKey.ILLEGAL_REQUEST, 0x24, 0x00),
  LUN_NOT_SUPPORTED: code(SenseKey.ILLEGAL_REQUEST, 0x25, 0x00),
  INVALID_FIELD_IN_PARAMETER_LIST: code(SenseKey.ILLEGAL_REQUEST, 0x26, 0x00),
  SAVING_PARAMETERS_NOT_SUPPORTED: code(SenseKey.ILLEGAL_REQUEST, 0x39, 0x00),
  /** POWER ON, RESET, OR BUS DEVICE RESET OCCURRED. */
  RESET_OCCURRED: code(SenseKey.UNIT_ATTENTION, 0x29, 0x00),
  /** BUS DEVICE RESET FUNCTION OCCURRED (after LOGICAL UNIT RESET). */
  LUN_RESET_OCCURRED: code(SenseKey.UNIT_ATTENTION, 0x29, 0x03),
  /** I_T NEXUS LOSS OCCURRED (after I_T NEXUS RESET). */
  NEXUS_LOSS_OCCURRED: code(SenseKey.UNIT_ATTENTION, 0x29, 0x07),
  CAPACITY_CHANGED: code(SenseKey.UNIT_ATTENTION, 0x2a, 0x09),
  REPORTED_LUNS_CHANGED: code(SenseKey.UNIT_ATTENTION, 0x3f, 0x0e),
  WRITE_PROTECTED: code(SenseKey.DATA_PROTECT, 0x27, 0x00),
  /** SPACE ALLOCATION FAILED WRITE PROTECT (the image's filesystem is full). */
  SPACE_ALLOCATION_FAILED: code(SenseKey.DATA_PROTECT, 0x27, 0x07),
  MISCOMPARE_DURING_VERIFY: code(SenseKey.MISCOMPARE, 0x1d, 0x00),
} as const;

/** VPD page codes (INQUIRY with EVPD). */
export const VpdPage = {
  SUPPORTED_PAGES: 0x00,
  UNIT_SERIAL_NUMBER: 0x80,
  DEVICE_IDENTIFICATION: 0x83,
  BLOCK_LIMITS: 0xb0,
  BLOCK_DEVICE_CHARACTERISTICS: 0xb1,
  LOGICAL_BLOCK_PROVISIONING: 0xb2,
} as const;

/** Mode page codes. */
export const ModePage = {
  CACHING: 0x08,
  CONTROL: 0x0a,
  ALL: 0x3f,
} as const;

/** Peripheral device types (INQUIRY byte 0, bits 4-0). */
export const DeviceType = {
  DISK: 0x00,
  WELL_KNOWN_LU: 0x1e,
  UNKNOWN: 0x1f,
} as const;

/** INQUIRY byte 0 for a LUN with no logical unit behind it: qualifier 011b, type 1Fh. */
export const INQUIRY_NOT_PRESENT = 0x7f;

/** The REPORT LUNS well-known logical unit, as a LUN number (SAM-5 extended address 0xC101). */
export const WLUN_REPORT_LUNS = 0xc101;

/** Highest LUN of the single-level flat addressing the target takes (14 bits). */
export const MAX_LUN = 0x3fff;

/** Bytes of fixed-format sense data the target produces. */
export const FIXED_SENSE_LENGTH = 18;

/**
 * CDB length by operation code group (SPC-4, 4.2.5.1): 6, 10, 10, reserved, 16, 12, vendor, vendor. 0 when the
 * group has no fixed length.
 */
export function cdbLength(opcode: number): number {
  switch (opcode >> 5) {
    case 0: return 6;
    case 1:
    case 2: return 10;
    case 4: return 16;
    case 5: return 12;
    default: return 0;
  }
}
