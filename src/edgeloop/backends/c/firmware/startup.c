/* Start-up code for QEMU's MPS2 boards (mps2-an385 Cortex-M3, mps2-an386 Cortex-M4F,
 * mps2-an500 Cortex-M7).
 *
 * The vector table goes at address 0 (see mps2_sections.ld). Reset turns on the
 * FPU when the core has one (the code is then built with -mfloat-abi=hard, and the first floating-point
 * instruction would fault with the coprocessor still off), copies .data from
 * its load address, then hands over to newlib's semihosting start-up code
 * (_start from rdimon-crt0: clears .bss, opens the semihosting console, runs
 * main and passes its return value to exit). Faults print one line through
 * semihosting and stop QEMU with exit code 99 instead of locking it up.
 * Written here because Debian packages no board support for the MPS2 boards
 * (Arm's CMSIS device start-up files are not in the archive). */
#include <stdint.h>

extern uint32_t __stack_top__;
extern uint32_t __data_start__, __data_end__, __data_load__;
extern void _start(void);

void Reset_Handler(void);
void el_fault_handler(void);
void el_unused_handler(void);

__attribute__((section(".vectors"), used))
void (*const el_vectors[16])(void) = {
    (void (*)(void))(&__stack_top__), /* initial stack pointer */
    Reset_Handler,
    el_fault_handler,  /* NMI */
    el_fault_handler,  /* HardFault */
    el_fault_handler,  /* MemManage */
    el_fault_handler,  /* BusFault */
    el_fault_handler,  /* UsageFault */
    0, 0, 0, 0,
    el_unused_handler, /* SVCall */
    el_unused_handler, /* DebugMonitor */
    0,
    el_unused_handler, /* PendSV */
    el_unused_handler, /* SysTick */
};

/* A semihosting call (Arm semihosting specification: BKPT 0xAB on M-profile). */
static uint32_t el_semihost(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static void el_semihost_exit(uint32_t code)
{
    /* SYS_EXIT_EXTENDED (0x20): reason ADP_Stopped_ApplicationExit, then the exit code. */
    uint32_t block[2] = {0x20026u, code};
    el_semihost(0x20u, block);
    for (;;) {
    }
}

void el_fault_handler(void)
{
    el_semihost(0x04u, "EL:FAULT the program faulted (HardFault/UsageFault/BusFault)\n"); /* SYS_WRITE0 */
    el_semihost_exit(99u);
}

void el_unused_handler(void)
{
    el_semihost(0x04u, "EL:FAULT unexpected exception\n");
    el_semihost_exit(98u);
}

void Reset_Handler(void)
{
    volatile uint32_t *cpacr = (volatile uint32_t *)0xE000ED88u;
    uint32_t *src = &__data_load__;
    uint32_t *dst = &__data_start__;

#if defined(__ARM_FP)
    *cpacr |= 0xFu << 20; /* CP10 and CP11 full access: the FPU (M4F/M7; M0+/M3 have none) */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#else
    (void)cpacr;
#endif
    while (dst < &__data_end__) {
        *dst++ = *src++;
    }
    _start();
    el_semihost_exit(97u);
}
