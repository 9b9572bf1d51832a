//! The flow-matching sampler: Euler steps along a shifted sigma schedule, with
//! classifier-free guidance batched into one pass.
//!
//! Flow matching moves latents from noise (sigma 1) to data (sigma 0) along the velocity
//! the transformer predicts: `x += (sigma_next - sigma) * v(x, sigma)`. The schedule
//! spends more steps at high noise when `shift > 1` (`shift * t / (1 + (shift - 1) * t)`,
//! as LTX-2 and SD3 do). With guidance above 1 the conditional and unconditional passes go
//! through the transformer as one batch of two, so a streamed block crosses PCIe once per
//! step, not twice.

use tch::{Kind, TchError, Tensor};

/// `steps + 1` noise levels from `start` down to 0: the shifted schedule from 1 to 0,
/// scaled so that it begins exactly at `start` (the level a refining stage re-noised to).
pub fn sigmas(steps: u32, shift: f64, start: f64) -> Vec<f64> {
    let steps = steps.max(1);
    (0..=steps)
        .map(|i| {
            let t = 1.0 - f64::from(i) / f64::from(steps);
            start * shift * t / (1.0 + (shift - 1.0) * t)
        })
        .collect()
}

/// Noise mixed into latents at level `sigma`: `(1 - sigma) * x + sigma * noise`.
pub fn renoise(x: &Tensor, noise: &Tensor, sigma: f64) -> Result<Tensor, TchError> {
    x.f_mul_scalar(1.0 - sigma)?
        .f_add(&noise.f_mul_scalar(sigma)?)
}

/// Runs the Euler steps. `velocity(x, sigma)` gets a batch of one (no guidance) or two
/// (conditional first, then unconditional) and `after_step(i)` runs after each step (for
/// progress, which may stop the loop with its error).
pub fn sample<E: From<TchError>>(
    mut x: Tensor,
    sigmas: &[f64],
    guidance: f64,
    velocity: &mut dyn FnMut(&Tensor, &Tensor) -> Result<Tensor, E>,
    after_step: &mut dyn FnMut(u32) -> Result<(), E>,
) -> Result<Tensor, E> {
    let guided = guidance > 1.0;
    let batch = if guided { 2 } else { 1 };
    for (i, pair) in sigmas.windows(2).enumerate() {
        let (sigma, next) = (pair[0], pair[1]);
        let sigma_t = Tensor::f_full([batch], sigma, (Kind::Float, x.device()))?;
        let v = if guided {
            let both = Tensor::f_cat(&[&x, &x], 0)?;
            let v = velocity(&both, &sigma_t)?;
            let (cond, uncond) = (v.f_narrow(0, 0, 1)?, v.f_narrow(0, 1, 1)?);
            uncond.f_add(&cond.f_sub(&uncond)?.f_mul_scalar(guidance)?)?
        } else {
            velocity(&x, &sigma_t)?
        };
        x = x.f_add(&v.f_mul_scalar(next - sigma)?)?;
        after_step(i as u32 + 1)?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn the_schedule_falls_from_start_to_zero_and_shift_keeps_it_high() {
        let linear = sigmas(4, 1.0, 1.0);
        assert_eq!(linear, [1.0, 0.75, 0.5, 0.25, 0.0]);
        let shifted = sigmas(4, 3.0, 1.0);
        assert_eq!((shifted[0], shifted[4]), (1.0, 0.0));
        assert!(shifted[2] > 0.5);
        assert!((sigmas(2, 1.0, 0.4)[0] - 0.4).abs() < 1e-12);
        // A refining stage starts at the level it re-noised to, whatever the shift.
        let refine = sigmas(3, 3.0, 0.4);
        assert!((refine[0] - 0.4).abs() < 1e-12 && refine[3] == 0.0);
        assert!(refine.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn euler_steps_along_a_constant_velocity_reach_its_target() {
        // v = x - target... a field whose flow from any x ends at target after sigma 1->0
        // is v = (x - target) / sigma; with constant v = noise - data the end is exact.
        let data = Tensor::from_slice(&[1.0f32, -2.0]).view([1, 2]);
        let noise = Tensor::from_slice(&[0.5f32, 0.5]).view([1, 2]);
        let v = (&noise - &data).detach();
        let mut steps = Vec::new();
        let out = sample::<TchError>(
            noise.shallow_clone(),
            &sigmas(3, 1.0, 1.0),
            1.0,
            &mut |x, s| {
                assert_eq!((x.size(), s.size()), (vec![1, 2], vec![1]));
                Ok(v.shallow_clone())
            },
            &mut |i| {
                steps.push(i);
                Ok(())
            },
        )
        .unwrap();
        assert!(out.allclose(&data, 1e-6, 1e-6, false));
        assert_eq!(steps, [1, 2, 3]);
        let _ = Device::Cpu;
    }

    #[test]
    fn guidance_runs_one_batch_of_two_and_extrapolates() {
        let x = Tensor::zeros([1, 1], (Kind::Float, Device::Cpu));
        let out = sample::<TchError>(
            x,
            &[1.0, 0.0],
            3.0,
            &mut |x, _| {
                assert_eq!(x.size()[0], 2);
                // conditional says -1, unconditional -0.5
                Ok(Tensor::from_slice(&[-1.0f32, -0.5]).view([2, 1]))
            },
            &mut |_| Ok(()),
        )
        .unwrap();
        // v = -0.5 + 3 * (-1 + 0.5) = -2; x = 0 + (0 - 1) * -2 = 2
        assert!((out.double_value(&[0, 0]) - 2.0).abs() < 1e-6);
    }
}
