/**
 * SCSI target emulation, independent of any transport: disks (SBC-3 direct-access logical units) over block
 * storage, targets with their LUN inventories and task management, and a bus of targets.
 */
export * from './constants.js';
export { encodeFixedSense, decodeFixedSense, describeSense, type DecodedSense, type FieldPointer } from './sense.js';
export { ScsiTask, TaskResponse, MAX_CDB_SIZE, MAX_SENSE_SIZE, type TaskStep } from './task.js';
export { LogicalUnit, type LogicalUnitOptions, type LogicalUnitStats } from './logical-unit.js';
export { ScsiTarget, TmfResponse, MAX_UNITS_PER_TARGET, encodeLun, type TaskManagementFunction } from './target.js';
export { ScsiBus, type BusChange, type ScsiBusOptions, type UnitAddress } from './bus.js';
export { sliceViews, sliceViewsInto, copyToViews, copyFromViews, viewsLength, isZero, NO_BUFFERS } from '../util/views.js';
export { standardInquiry, vpdPage, supportedVpdPages, STANDARD_INQUIRY_LENGTH, type InquiryProfile } from './inquiry.js';
export { modePage, parseModeSelect, PageControl, MODE_PAGES, type ModeProfile, type ModeSelectResult } from './mode.js';
