// The small guest images the unit tests compare the readers on are built by the lab
// (hypervisor/lab/guest-images.ts), which also builds the sample VMs' disks.
export { makeGuestImages, type GuestImages } from '../../hypervisor/lab/guest-images';
