//! QEMU's edu device (hw/misc/edu.c) through its VFIO device fd: config space and BAR0 are
//! VFIO regions of the fd (iommufd_sys's region calls); its DMA engine copies between guest
//! memory (through the IOMMU) and a 4 KiB buffer of its own.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use iommufd_sys::{
    vfio_region_info, vfio_region_read, vfio_region_write, VfioRegionInfo,
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
};

/// edu: DMA registers in BAR0, a 4 KiB buffer at device address 0x40000, DMA addresses limited
/// to 28 bits.
const EDU_DMA_SRC: u64 = 0x80;
const EDU_DMA_DST: u64 = 0x88;
const EDU_DMA_CNT: u64 = 0x90;
const EDU_DMA_CMD: u64 = 0x98;
pub const EDU_BUF: u64 = 0x40000;
const EDU_CMD_START: u64 = 1;
const EDU_CMD_TO_RAM: u64 = 2;
/// include/uapi/linux/pci_regs.h: the command register, memory space and bus master enable.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;

/// edu's BAR0 through a VFIO device fd.
#[derive(Debug)]
pub struct Edu<'a> {
    dev: BorrowedFd<'a>,
    bar0: VfioRegionInfo,
}

impl<'a> Edu<'a> {
    /// Find BAR0 and turn memory space and bus mastering on.
    pub fn new(dev: BorrowedFd<'a>) -> Result<Edu<'a>, String> {
        let bar0 = vfio_region_info(dev, VFIO_PCI_BAR0_REGION_INDEX)
            .map_err(|e| format!("BAR0 region info: {e}"))?;
        let cfg = vfio_region_info(dev, VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(|e| format!("config region info: {e}"))?;
        let mut cmd = [0u8; 2];
        vfio_region_read(dev, &cfg, PCI_COMMAND, &mut cmd)
            .map_err(|e| format!("read PCI_COMMAND: {e}"))?;
        let v = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        vfio_region_write(dev, &cfg, PCI_COMMAND, &v.to_le_bytes())
            .map_err(|e| format!("write PCI_COMMAND: {e}"))?;
        Ok(Edu { dev, bar0 })
    }

    fn w64(&self, reg: u64, v: u64) -> Result<(), String> {
        vfio_region_write(self.dev, &self.bar0, reg, &v.to_le_bytes())
            .map_err(|e| format!("edu write {reg:#x}: {e}"))
    }

    fn r64(&self, reg: u64) -> Result<u64, String> {
        let mut b = [0u8; 8];
        vfio_region_read(self.dev, &self.bar0, reg, &mut b)
            .map_err(|e| format!("edu read {reg:#x}: {e}"))?;
        Ok(u64::from_le_bytes(b))
    }

    /// One DMA transfer of `len` bytes; waits (bounded) for the device to finish it.
    pub fn dma(&self, src: u64, dst: u64, len: u64, to_ram: bool) -> Result<(), String> {
        self.w64(EDU_DMA_SRC, src)?;
        self.w64(EDU_DMA_DST, dst)?;
        self.w64(EDU_DMA_CNT, len)?;
        self.w64(
            EDU_DMA_CMD,
            EDU_CMD_START | if to_ram { EDU_CMD_TO_RAM } else { 0 },
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.r64(EDU_DMA_CMD)? & EDU_CMD_START != 0 {
            if Instant::now() > deadline {
                return Err("edu DMA did not complete in 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}
